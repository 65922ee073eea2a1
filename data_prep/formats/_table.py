"""Shared pieces of the column-based formats (macOS CSV, generic CSV and JSONL).

Column names and timestamp spellings vary between messengers, so the three
roles (time, speaker, text) are looked up by alias, and a timestamp may be ISO
text ("2020-06-28 15:15:00", "2020-06-28T15:15:00+09:00") or epoch seconds.
"""
from __future__ import annotations

import csv
from datetime import datetime, timezone
from typing import Callable, Iterable

from data_prep.formats._common import KINDS, ParseResult
from data_prep.records import Message

TIME_KEYS = ("timestamp", "ts", "time", "datetime", "date", "날짜", "시간")
SPEAKER_KEYS = ("speaker", "user", "name", "author", "sender", "from", "사용자", "이름")
TEXT_KEYS = ("text", "message", "content", "body", "메시지", "내용")


def pick(names: Iterable[str], aliases: tuple[str, ...]) -> str | None:
    """The first of ``names`` (case-insensitive) that is one of ``aliases``."""
    lowered = {n.strip().lower(): n for n in names}
    return next((lowered[a] for a in aliases if a in lowered), None)


def parse_timestamp(value, cache: dict) -> datetime:
    """ISO text or epoch seconds -> naive datetime (wall time as written; epochs read as UTC).

    Raises ValueError for anything else.
    """
    ts = cache.get(value)
    if ts is None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ts = datetime.fromtimestamp(value, tz=timezone.utc).replace(tzinfo=None)
        elif isinstance(value, str):
            ts = datetime.fromisoformat(value.strip()).replace(tzinfo=None)
        else:
            raise ValueError(f"not a timestamp: {value!r}")
        cache[value] = ts
    return ts


def parse_csv(lines: list[str], source: str, roles: Callable[[list[str]], tuple[int, int, int] | None]) -> ParseResult:
    """Parse a CSV export; ``roles(header) -> (time, speaker, text) column indexes``.

    Quoted bodies may span lines: those physical lines count as continuation.
    A repeated header row (exports pasted together) counts as header.
    """
    kinds = dict.fromkeys(KINDS, 0)
    messages: list[Message] = []
    unparsed: list[tuple[int, str]] = []
    reader = csv.reader(line + "\n" for line in lines)
    cols, header, cache, done = None, None, {}, 0
    try:
        for row in reader:
            start, n, done = done + 1, reader.line_num - done, reader.line_num
            if not any(cell.strip() for cell in row):
                kinds["blank"] += n
            elif cols is None or row == header:
                cols = cols or roles(row)
                header = header or row
                kinds["header" if cols else "unparsed"] += n
                if not cols:
                    unparsed.append((start, lines[start - 1]))
            else:
                msg = _row_message(row, cols, cache, source, start)
                if msg is None:
                    kinds["unparsed"] += n
                    unparsed.append((start, lines[start - 1]))
                else:
                    messages.append(msg)
                    kinds["message" if msg.speaker else "system"] += 1
                    kinds["continuation"] += n - 1
    except csv.Error:  # an unclosed quote ran to the end of the file
        for i in range(done, len(lines)):
            kinds["unparsed"] += 1
            unparsed.append((i + 1, lines[i]))
    return messages, kinds, unparsed


def _row_message(row: list[str], cols: tuple[int, int, int], cache: dict, source: str, line: int) -> Message | None:
    t, s, x = cols
    if len(row) <= max(cols):
        return None
    try:
        ts = parse_timestamp(row[t], cache)
    except ValueError:
        return None
    return Message(ts, row[s], row[x], source, line)


def csv_header(head: list[str]) -> list[str] | None:
    """The first non-blank head line read as a CSV row."""
    for line in head:
        if line.strip():
            return next(csv.reader([line]), None)
    return None


def write_csv(rows: Iterable[list[str]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()
