"""Generic ``.csv`` chat logs from other messengers.

The header names the columns: time (timestamp/ts/time/date), speaker
(speaker/user/name/author/sender) and text (text/message/content); other
columns are ignored. Timestamps are ISO text or epoch seconds.
"""
from __future__ import annotations

from data_prep.formats._common import Format, ParseResult, Progress
from data_prep.formats._table import SPEAKER_KEYS, TEXT_KEYS, TIME_KEYS, csv_header, parse_csv, pick, write_csv
from data_prep.records import Message


def _roles(row: list[str]) -> tuple[int, int, int] | None:
    names = [pick(row, keys) for keys in (TIME_KEYS, SPEAKER_KEYS, TEXT_KEYS)]
    if None in names:
        return None
    return tuple(row.index(n) for n in names)  # type: ignore[return-value]


def detect(head: list[str]) -> bool:
    row = csv_header(head)
    return row is not None and len(row) >= 3 and _roles(row) is not None


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    """``progress`` is not called: parse_text reports the whole text when this returns."""
    return parse_csv(lines, source, _roles)


def write(messages: list[Message]) -> str:
    """Render as ``timestamp,speaker,text`` with ISO timestamps."""
    rows = [["timestamp", "speaker", "text"]]
    rows += [[m.ts.isoformat(sep=" ") if m.ts else "", m.speaker, m.text] for m in messages]
    return write_csv(rows)


FORMAT = Format("generic_csv", detect, parse, write)
