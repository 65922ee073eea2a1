"""Shared pieces of the column-based formats (macOS CSV, generic CSV and JSONL).

Column names and timestamp spellings vary between messengers, so the three
roles (time, speaker, text) are looked up by alias, and a timestamp may be ISO
text ("2020-06-28 15:15:00", "2020-06-28T15:15:00+09:00") or epoch seconds.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

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
        if isinstance(value, str):
            ts = datetime.fromisoformat(value.strip())
            if ts.tzinfo is not None:  # replace() costs as much as the parse: only when needed
                ts = ts.replace(tzinfo=None)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ts = datetime.fromtimestamp(value, tz=timezone.utc).replace(tzinfo=None)
        else:
            raise ValueError(f"not a timestamp: {value!r}")
        cache[value] = ts
    return ts


def csv_rows(lines: list[str]) -> Iterator[tuple[int, int, list[str] | None]]:
    """``(first line number, physical lines, row)``; row None for lines the CSV reader rejects.

    Strict reading: an unclosed quote would otherwise swallow the rest of the
    file into one message. After an error, reading resumes on the next line.
    """
    start = 0
    while start < len(lines):
        text = getattr(lines, "text", None) if start == 0 else None
        text = text or "\n".join(lines[start:]) + "\n"
        # StringIO iteration splits at "\n" only, like split_lines did; csv reads it at C speed.
        reader = csv.reader(io.StringIO(text, newline="\n"), strict=True)
        done = 0
        try:
            for row in reader:
                yield start + done + 1, reader.line_num - done, row
                done = reader.line_num
            return
        except csv.Error:
            bad = max(reader.line_num, done + 1) - done
            yield start + done + 1, bad, None
            start += done + bad


def parse_csv(lines: list[str], source: str, roles: Callable[[list[str]], tuple[int, int, int] | None],
              headerless: tuple[int, int, int] | None = None) -> ParseResult:
    """Parse a CSV export; ``roles(header) -> (time, speaker, text) column indexes``.

    ``headerless``: the file has no header row; these are the columns.
    Quoted bodies may span lines: those physical lines count as continuation.
    A repeated header row (exports pasted together) counts as header; a row
    with an empty speaker is a system line.
    """
    kinds = dict.fromkeys(KINDS, 0)
    messages: list[Message] = []
    unparsed: list[tuple[int, str]] = []
    cols, header, cache = _with_max(headerless), None, {}
    for start, n, row in csv_rows(lines):
        if row is not None and cols is not None and len(row) > cols[3] and row != header:
            ts = cache.get(row[cols[0]]) or _timestamp_or_none(row[cols[0]], cache)
            if ts is not None:
                messages.append(Message(ts, row[cols[1]], row[cols[2]], source, start))
                kinds["continuation"] += n - 1
                continue
        kind = "unparsed" if row is None else _other_row(row, cols is None or row == header)
        if kind == "header" and cols is None:
            cols, header = _with_max(roles(row)), row
            kind = "header" if cols else "unparsed"
        if kind == "unparsed":
            unparsed += [(k, lines[k - 1]) for k in range(start, start + n)]
        kinds[kind] += n
    n_system = sum(1 for m in messages if not m.speaker)
    kinds["message"], kinds["system"] = len(messages) - n_system, n_system
    return messages, kinds, unparsed


def _timestamp_or_none(value: str, cache: dict) -> datetime | None:
    try:
        return parse_timestamp(value, cache)
    except ValueError:
        return None


def _with_max(cols: tuple[int, int, int] | None) -> tuple[int, int, int, int] | None:
    """Column indexes plus the largest of them (a row must be longer than it)."""
    return (*cols, max(cols)) if cols else None


def _other_row(row: list[str], header_like: bool) -> str:
    if not any(cell.strip() for cell in row):
        return "blank"
    return "header" if header_like else "unparsed"


def csv_header(head: list[str]) -> list[str] | None:
    """The first non-blank head line read as a CSV row."""
    for line in head:
        if line.strip():
            return next(csv.reader([line]), None)
    return None


def write_csv(rows: Iterable[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()
