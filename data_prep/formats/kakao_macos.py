"""KakaoTalk for macOS ``.csv`` exports.

    Date,User,Message
    2020-06-28 15:15:00,"민수","안녕"
    2020-06-28 15:16:00,"철수","여러 줄
    메시지"

Korean column names (``날짜,사용자,메시지``) are accepted too, and so is a file
without the header row (its first row ``2016-12-17 15:30:20,"name","text"``). A
row with an empty user is a system line.
"""
from __future__ import annotations

import re

from data_prep.formats._common import Format, ParseResult, Progress
from data_prep.formats._table import csv_header, parse_csv, write_csv
from data_prep.records import Message

HEADERS = (("Date", "User", "Message"), ("날짜", "사용자", "메시지"))
COLUMNS = (0, 1, 2)  # date, user, message
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _roles(row: list[str]) -> tuple[int, int, int] | None:
    cells = tuple(c.strip() for c in row)
    return COLUMNS if cells[:3] in HEADERS else None


def _is_row(row: list[str]) -> bool:
    """A message row as macOS writes it (what a file without header row starts with)."""
    return len(row) == 3 and _TIMESTAMP.fullmatch(row[0]) is not None


def detect(head: list[str]) -> bool:
    row = csv_header(head)
    return row is not None and (_roles(row) is not None or _is_row(row))


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    """``progress`` is not called: parse_text reports the whole text when this returns."""
    row = csv_header(lines[:50])
    headerless = row is not None and _roles(row) is None and _is_row(row)
    return parse_csv(lines, source, _roles, COLUMNS if headerless else None)


def write(messages: list[Message], korean_header: bool = False) -> str:
    """Render as a macOS CSV export (``korean_header``: 날짜,사용자,메시지)."""
    rows = [list(HEADERS[korean_header])]
    rows += [[f"{m.ts:%Y-%m-%d %H:%M:%S}", m.speaker, m.text] for m in messages]
    return write_csv(rows)


FORMAT = Format("kakao_macos", detect, parse, write)
