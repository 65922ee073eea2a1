"""Shared machinery of the line-based export parsers.

A text export is a sequence of *records* (a line that starts a message, a
system line, a date separator, a header line). Every other non-blank line
continues the body of the message above it; before any message it is
unparsed. :func:`parse_lines` runs that state machine once for every text
format; a format only supplies ``classify(line)``.
"""
from __future__ import annotations

import re
from datetime import datetime
from dataclasses import dataclass
from typing import Callable

from data_prep.records import Message

KINDS = ("message", "continuation", "header", "date", "system", "blank", "unparsed")

# What ``classify`` returns: None (not a record) or one of these tuples.
MESSAGE, SYSTEM, DATE, BAD = "message", "system", "date", "bad"
Record = tuple  # (MESSAGE, ts, speaker, text) | (SYSTEM, ts, text) | (DATE,) | (BAD,)
Classify = Callable[[str], "Record | None"]
ParseResult = tuple[list[Message], dict[str, int], list[tuple[int, str]]]

_AM = frozenset(("오전", "AM", "am", "a.m.", "A.M."))
_PM = frozenset(("오후", "PM", "pm", "p.m.", "P.M."))

MONTH_FULL = ("January", "February", "March", "April", "May", "June", "July",
              "August", "September", "October", "November", "December")
MONTHS = {name: i for i, full in enumerate(MONTH_FULL, 1) for name in (full, full[:3], full[:3] + ".")}
MONTHS["Sept"] = 9
MONTH_NAMES = tuple(MONTHS)
MONTH_RE = "|".join(sorted(map(re.escape, MONTH_NAMES), key=len, reverse=True))
WEEKDAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAYS_KO = ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일")

# Lines that start an export: the title and the save date. They may repeat
# mid-file when several exports were pasted together.
_TITLE_ENDS = ("카카오톡 대화", "카카오톡 대화방")
_TITLE_STARTS = ("Talk with ", "KakaoTalk Chats with ", "Chat with ", "KakaoTalk Chat with ")
_SAVED_STARTS = ("저장한 날짜", "Date Saved", "Date saved")
_FILE_NAME = re.compile(r"^\S.*\.(?:txt|csv)$", re.I)

# Join/leave/invite/kick lines that carry no timestamp (Windows PC export).
SYSTEM_TEXT = re.compile(
    r"^(?:.+님(?:이|을)? .*(?:들어왔습니다|나갔습니다|초대했습니다|초대하였습니다|내보냈습니다)\."
    r"|.+ (?:joined|left) this chatroom\."
    r"|.+ invited .+ to (?:this|the) chatroom\."
    r"|.+ (?:has been|was) (?:removed|kicked) from this chatroom\."
    r"|채팅방 관리자가 메시지를 가렸습니다\.)$"
)


def hour24(ampm: str | None, hour: int) -> int:
    """12-hour clock to 24-hour: 오전/AM 12 is 0, 오후/PM 12 is 12. Raises ValueError when out of range."""
    if ampm is None:
        if hour > 23:
            raise ValueError(f"hour {hour}")
        return hour
    if hour > 12:
        raise ValueError(f"hour {hour} with {ampm}")
    if ampm in _AM:
        return hour % 12
    if ampm in _PM:
        return hour % 12 + 12
    raise ValueError(f"not AM/PM: {ampm}")


def is_system_text(line: str) -> bool:
    """A join/leave/invite line without timestamp (cheap suffix test first)."""
    return line.endswith(".") and SYSTEM_TEXT.match(line) is not None


def is_saved_line(line: str) -> bool:
    return line.startswith(_SAVED_STARTS) and ":" in line


def is_title_line(line: str) -> bool:
    s = line.strip()
    return s.endswith(_TITLE_ENDS) or s.startswith(_TITLE_STARTS)


def header_lines(lines: list[str], i: int, before_first: bool) -> int:
    """How many header lines start at index ``i`` (0 when none).

    A title line mid-file could be message text ("Talk with me"), so it counts
    only before the first message or when a save-date line follows it.
    """
    line = lines[i]
    if is_saved_line(line):
        return 1
    if is_title_line(line):
        if before_first:
            return 1
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        return j - i + 1 if j < len(lines) and is_saved_line(lines[j]) else 0
    if before_first and _FILE_NAME.match(line.strip()):
        return 1  # iOS exports may start with their own file name
    return 0


@dataclass(frozen=True)
class Format:
    """One export format: sniff it, parse it, write it (for converters, benchmarks, round trips)."""

    name: str
    detect: Callable[[list[str]], bool]  # head_lines (first non-blank lines) -> is this format?
    parse: Callable[[list[str], str], ParseResult]  # (lines, source) -> messages, line_kinds, unparsed
    write: Callable[..., str]  # (messages, **opts) -> export text


class _Builder:
    """Collects messages and line kinds; holds the open message until its body ends."""

    def __init__(self, source: str):
        self.source = source
        self.messages: list[Message] = []
        self.kinds = dict.fromkeys(KINDS, 0)
        self.unparsed: list[tuple[int, str]] = []
        self.open: list | None = None  # [ts, speaker, first_line, lineno, extra_lines]
        self.blanks: list[str] = []  # blank lines seen after the open message
        self.last_ts: datetime | None = None

    def close(self) -> None:
        if self.open is not None:
            ts, speaker, text, lineno, extra = self.open
            if extra:
                text = "\n".join([text, *extra]).strip("\n")
            self.messages.append(Message(ts, speaker, text, self.source, lineno))
            self.open = None
        if self.blanks:
            self.kinds["blank"] += len(self.blanks)
            self.blanks = []

    def continuation(self, line: str) -> None:
        extra = self.open[4]
        if self.blanks:
            extra.extend(self.blanks)
            self.kinds["continuation"] += len(self.blanks)
            self.blanks = []
        extra.append(line)
        self.kinds["continuation"] += 1

    def result(self) -> ParseResult:
        self.close()
        return self.messages, self.kinds, self.unparsed


def parse_lines(lines: list[str], source: str, classify: Classify) -> ParseResult:
    """Run the record/continuation state machine over ``lines`` with a format's ``classify``."""
    b = _Builder(source)
    kinds, append_msg = b.kinds, b.messages.append
    skip = 0
    for i, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        rec = classify(line)
        if rec is None:
            skip = _not_a_record(b, lines, i)
            continue
        kind = rec[0]
        if kind is MESSAGE:
            b.close()
            b.open = [rec[1], rec[2], rec[3], i + 1, []]
            b.last_ts = rec[1] or b.last_ts
            kinds["message"] += 1
            continue
        b.close()
        if kind is SYSTEM:
            ts = rec[1] or b.last_ts  # Windows join/leave lines print no time: keep the last one
            append_msg(Message(ts, "", rec[2], source, i + 1))
            kinds["system"] += 1
        elif kind is DATE:
            kinds["date"] += 1
        else:
            kinds["unparsed"] += 1
            b.unparsed.append((i + 1, line))
    return b.result()


def _not_a_record(b: _Builder, lines: list[str], i: int) -> int:
    """Blank, header, continuation or unparsed; returns how many following lines were consumed."""
    line = lines[i]
    if not line.strip():
        if b.open is not None:
            b.blanks.append(line)
        else:
            b.kinds["blank"] += 1
        return 0
    n = header_lines(lines, i, before_first=not b.messages and b.open is None)
    if n:
        b.close()
        for j in range(i, i + n):
            b.kinds["header" if lines[j].strip() else "blank"] += 1
        return n - 1
    if b.open is not None:
        b.continuation(line)
    else:
        b.kinds["unparsed"] += 1
        b.unparsed.append((i + 1, line))
    return 0


def clock_12(ts: datetime, ampm: tuple[str, str]) -> tuple[str, int]:
    """(오전/오후 or AM/PM, hour on a 12-hour clock) for writers."""
    return ampm[ts.hour >= 12], (ts.hour % 12) or 12
