"""Shared pieces of the column-based formats (macOS CSV, generic CSV and JSONL).

Column names and timestamp spellings vary between messengers, so the three
roles (time, speaker, text) are looked up by alias, and a timestamp may be ISO
text ("2020-06-28 15:15:00", "2020-06-28T15:15:00+09:00") or epoch seconds.
"""
from __future__ import annotations

import csv
import io
import sys
from datetime import datetime, timezone
from operator import countOf, itemgetter
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


def parse_csv(lines: list[str], source: str, roles: Callable[[list[str]], tuple[int, int, int] | None],
              headerless: tuple[int, int, int] | None = None) -> ParseResult:
    """Parse a CSV export; ``roles(header) -> (time, speaker, text) column indexes``.

    ``headerless``: the file has no header row; these are the columns.
    Quoted bodies may span lines: those physical lines count as continuation.
    A repeated header row (exports pasted together) counts as header; a row
    with an empty speaker is a system line. Strict reading: an unclosed quote
    would otherwise swallow the rest of the file into one message; the lines of
    a row the CSV reader rejects are unparsed and reading resumes after them.
    """
    table = _Table(lines, source, roles, _with_max(headerless))
    if not lines:
        return table.result(0)
    # split_lines keeps the text it split (data_prep.encoding.Lines): no second join
    text = getattr(lines, "text", None) or "\n".join(lines) + "\n"
    # StringIO iteration splits at "\n" only, like split_lines did; csv reads it at C speed.
    reader = csv.reader(io.StringIO(text, newline="\n"), strict=True)
    done, finished = 0, False
    while not finished:
        done, finished = table.read(reader, done)
    return table.result(done)


_NO_COLS = (0, 0, 0, sys.maxsize)  # before the header row: no row is long enough to be a message


class _Table:
    """What parse_csv has found so far: messages, line kinds, unparsed lines, the columns."""

    def __init__(self, lines: list[str], source: str, roles: Callable[[list[str]], tuple[int, int, int] | None],
                 cols: tuple[int, int, int, int] | None) -> None:
        self.lines, self.source, self.roles, self.cols = lines, source, roles, cols
        self.header: list[str] | None = None
        self.messages: list[Message] = []
        self.kinds = dict.fromkeys(KINDS, 0)
        self.unparsed: list[tuple[int, str]] = []
        self.cache: dict = {}  # timestamps only the general parse_timestamp reads (padded with spaces)

    def read(self, reader, done: int) -> tuple[int, bool]:
        """Rows of ``reader`` after its line ``done``: ``(lines read, True)`` at its end, ``(.., False)``
        after a row it rejects (counted unparsed; the reader goes on at the next line).

        The per-row work is inlined, on locals (a row costs about as much as the
        CSV reader's own work on it): a row long enough whose time cell is a
        timestamp is a message; anything else goes to :meth:`other`. A header
        row's time cell is a column name, never a timestamp, so a repeated
        header row always lands there.
        """
        append, source, new_tuple = self.messages.append, self.source, tuple.__new__
        fromiso, cache = datetime.fromisoformat, self.cache
        t, s, x, longest = self.cols or _NO_COLS
        try:
            for row in reader:
                if len(row) > longest:
                    value = row[t]
                    try:  # fromisoformat rejects surrounding whitespace: parse_timestamp strips it
                        ts = fromiso(value)
                    except ValueError:
                        ts = _timestamp_or_none(value, cache)
                    if ts is not None:
                        if ts.tzinfo is not None:  # replace() costs as much as the parse: only when needed
                            ts = ts.replace(tzinfo=None)
                        # Message(...) minus the NamedTuple's Python-level __new__ (nothing to check)
                        append(new_tuple(Message, (ts, row[s], row[x], source, done + 1)))
                        done = reader.line_num
                        continue
                self.other(row, done + 1, reader.line_num - done)
                done = reader.line_num
                t, s, x, longest = self.cols or _NO_COLS
        except csv.Error:
            self.other(None, done + 1, reader.line_num - done)
            return reader.line_num, False
        return done, True

    def other(self, row: list[str] | None, line: int, n: int) -> None:
        """A row that is no message (None: rejected by the reader) at ``line``, ``n`` physical lines."""
        header_like = self.cols is None or row == self.header
        kind = "unparsed" if row is None else _other_row(row, header_like)
        if kind == "header" and self.cols is None:
            self.cols, self.header = _with_max(self.roles(row)), row
            kind = "header" if self.cols else "unparsed"
        if kind == "unparsed":
            self.unparsed += [(k, self.lines[k - 1]) for k in range(line, line + n)]
        self.kinds[kind] += n

    def result(self, lines_read: int) -> ParseResult:
        """The parse result; every line read that no other kind holds continues a message row."""
        kinds, messages = self.kinds, self.messages
        n_system = countOf(map(itemgetter(1), messages), "")  # CSV speakers are str: "" is the empty one
        kinds["message"], kinds["system"] = len(messages) - n_system, n_system
        kinds["continuation"] = lines_read - sum(kinds.values())
        return messages, kinds, self.unparsed


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
