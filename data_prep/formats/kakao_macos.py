"""KakaoTalk for macOS ``.csv`` exports.

    Date,User,Message
    2020-06-28 15:15:00,"민수","안녕"
    2020-06-28 15:16:00,"철수","여러 줄
    메시지"

Korean column names (``날짜,사용자,메시지``) are accepted too. A row with an
empty user is a system line.
"""
from __future__ import annotations

from data_prep.formats._common import Format, ParseResult, Progress
from data_prep.formats._table import csv_header, parse_csv, write_csv
from data_prep.records import Message

HEADERS = (("Date", "User", "Message"), ("날짜", "사용자", "메시지"))


def _roles(row: list[str]) -> tuple[int, int, int] | None:
    cells = tuple(c.strip() for c in row)
    return (0, 1, 2) if cells[:3] in HEADERS else None


def detect(head: list[str]) -> bool:
    row = csv_header(head)
    return row is not None and _roles(row) is not None


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    """``progress`` is not called: parse_text reports the whole text when this returns."""
    return parse_csv(lines, source, _roles)


def write(messages: list[Message], korean_header: bool = False) -> str:
    """Render as a macOS CSV export (``korean_header``: 날짜,사용자,메시지)."""
    rows = [list(HEADERS[korean_header])]
    rows += [[f"{m.ts:%Y-%m-%d %H:%M:%S}", m.speaker, m.text] for m in messages]
    return write_csv(rows)


FORMAT = Format("kakao_macos", detect, parse, write)
