"""Generic ``.jsonl`` chat logs: one JSON object per line.

Keys by alias: time (timestamp/ts/time/date: ISO text or epoch seconds),
speaker (speaker/user/name/author/sender), text (text/message/content). An
object with an empty speaker is a system line.
"""
from __future__ import annotations

import json

from data_prep.formats._common import KINDS, Format, ParseResult, Progress
from data_prep.formats._table import SPEAKER_KEYS, TEXT_KEYS, TIME_KEYS, parse_timestamp, pick
from data_prep.records import Message


def _record(line: str):
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _keys(obj: dict) -> tuple[str, str, str] | None:
    keys = tuple(pick(obj, aliases) for aliases in (TIME_KEYS, SPEAKER_KEYS, TEXT_KEYS))
    return None if None in keys else keys  # type: ignore[return-value]


def detect(head: list[str]) -> bool:
    """Any head line is a JSON object with time, speaker and text keys (a bad first line is allowed)."""
    for line in head:
        obj = _record(line) if line.lstrip().startswith("{") else None
        if obj is not None and _keys(obj) is not None:
            return True
    return False


def _message(line: str, cache: dict, source: str, lineno: int) -> Message | None:
    obj = _record(line)
    keys = _keys(obj) if obj is not None else None
    if keys is None:
        return None
    ts, speaker, text = (obj[k] for k in keys)
    if not isinstance(speaker, str) or not isinstance(text, str):
        return None
    try:
        return Message(parse_timestamp(ts, cache), speaker, text, source, lineno)
    except (ValueError, TypeError, OverflowError, OSError):
        return None


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    """``progress`` is not called: parse_text reports the whole text when this returns."""
    kinds = dict.fromkeys(KINDS, 0)
    messages, unparsed, cache = [], [], {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            kinds["blank"] += 1
            continue
        msg = _message(line, cache, source, i)
        if msg is None:
            kinds["unparsed"] += 1
            unparsed.append((i, line))
        else:
            messages.append(msg)
            kinds["message" if msg.speaker else "system"] += 1
    return messages, kinds, unparsed


def write(messages: list[Message]) -> str:
    """One ``{"timestamp", "speaker", "text"}`` object per line (ISO timestamps)."""
    return "".join(
        json.dumps({"timestamp": m.ts.isoformat() if m.ts else None, "speaker": m.speaker, "text": m.text},
                   ensure_ascii=False) + "\n"
        for m in messages
    )


FORMAT = Format("generic_jsonl", detect, parse, write)
