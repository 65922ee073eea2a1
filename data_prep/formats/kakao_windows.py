"""KakaoTalk for Windows (PC) ``.txt`` exports, Korean and English UI.

    민수 님과 카카오톡 대화
    저장한 날짜 : 2024-05-02 20:06:55

    --------------- 2020년 6월 28일 일요일 ---------------
    [민수] [오후 3:15] 안녕
    철수님이 들어왔습니다.

English UI: ``Talk with 민수`` / ``Date Saved : ...``, ``--------------- Sunday,
June 28, 2020 ---------------`` and ``[민수] [3:15 PM] text``. Records carry only
the time, so the date comes from the last separator. Join/leave lines carry no
time at all: they get the time of the record before them.
"""
from __future__ import annotations

import re
from datetime import date, datetime

from data_prep.formats._common import (
    BAD, DATE, MESSAGE, MONTH_FULL, MONTH_RE, MONTHS, SYSTEM, WEEKDAYS_EN, WEEKDAYS_KO,
    FastPath, Format, ParseResult, Progress, hour24, is_system_text, parse_lines, time_on_day,
)
from data_prep.records import Message

_MESSAGE = re.compile(
    r"^\[(?P<name>.+?)\] \[(?P<time>(?:(?P<ap>오전|오후) )?(?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?:[ \u202f](?P<ap2>AM|PM))?)\] ?(?P<text>.*)$"
)
_MESSAGE_LINES = re.compile(_MESSAGE.pattern, re.M)  # for finditer over the whole text
# "[name] [<something with a time>]" that _MESSAGE rejected: a broken record, not body text.
_SHAPE = re.compile(r"^\[[^\]]+\] \[[^\]]*\d:\d\d[^\]]*\]")
_WD = "|".join(WEEKDAYS_EN)
_SEPARATOR = re.compile(
    r"^-{5,} (?:(?P<y>\d{4})년 (?P<mo>\d{1,2})월 (?P<d>\d{1,2})일(?: [월화수목금토일]요일)?"
    rf"|(?:(?:{_WD}), )?(?P<mon>{MONTH_RE}) (?P<d2>\d{{1,2}}), (?P<y2>\d{{4}})"  # Sunday, June 28, 2020
    rf"|(?:(?:{_WD}),? )?(?P<d3>\d{{1,2}}) (?P<mon3>{MONTH_RE}) (?P<y3>\d{{4}})) -{{5,}}$"  # Sunday, 28 June 2020
)


def detect(head: list[str]) -> bool:
    return any(_SEPARATOR.match(line) or _MESSAGE.match(line) for line in head)


def _separator_date(m: re.Match) -> date | None:
    try:
        if m.group("y"):
            return date(int(m.group("y")), int(m.group("mo")), int(m.group("d")))
        if m.group("y2"):
            return date(int(m.group("y2")), MONTHS[m.group("mon")], int(m.group("d2")))
        return date(int(m.group("y3")), MONTHS[m.group("mon3")], int(m.group("d3")))
    except ValueError:
        return None


def _hour_minute(m: re.Match) -> tuple[int, int]:
    minute = int(m.group("mi"))
    if minute > 59:
        raise ValueError(f"minute {minute}")
    return hour24(m.group("ap") or m.group("ap2"), int(m.group("h"))), minute


def _classifier():
    # midnight of the last separator's date; once set it is never None again
    day: list[datetime | None] = [None]
    timestamp, clock = time_on_day(day, 2, _hour_minute)  # a message's time on the separator's date
    match = _MESSAGE.match

    def message(m: re.Match):
        try:
            ts = timestamp(m)
        except ValueError:  # [오후 27:15]: looks like a record, is not one
            return (BAD,)
        return (MESSAGE, ts, m.group(1), m.group(7))

    def classify(line: str):
        m = match(line)
        if m is not None:
            return message(m)
        c = line[:1]
        if c == "[":
            return (BAD,) if _SHAPE.match(line) else None
        if c == "-":
            m = _SEPARATOR.match(line)
            if m is None:
                return None
            d = _separator_date(m)
            if d is None:
                return (BAD,)
            day[0] = datetime(d.year, d.month, d.day)
            return (DATE,)
        if is_system_text(line):
            return (SYSTEM, None, line)
        return None

    return classify, FastPath(_MESSAGE_LINES, (2, 1, 7), clock, timestamp, day)


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    classify, fast = _classifier()
    return parse_lines(lines, source, classify, fast, progress)


def _time(ts: datetime, lang: str) -> str:
    h12 = ts.hour % 12 or 12
    if lang == "ko":
        return f"{'오후' if ts.hour >= 12 else '오전'} {h12}:{ts.minute:02d}"
    return f"{h12}:{ts.minute:02d} {'PM' if ts.hour >= 12 else 'AM'}"


def _separator(d: date, lang: str) -> str:
    dashes = "-" * 15
    if lang == "ko":
        return f"{dashes} {d.year}년 {d.month}월 {d.day}일 {WEEKDAYS_KO[d.weekday()]} {dashes}"
    return f"{dashes} {WEEKDAYS_EN[d.weekday()]}, {MONTH_FULL[d.month - 1]} {d.day}, {d.year} {dashes}"


def write(messages: list[Message], lang: str = "ko", title: str = "대화상대", crlf: bool = False) -> str:
    """Render as a Windows PC export. ``crlf``: CRLF between records, LF inside bodies (as real exports)."""
    saved = max((m.ts for m in messages if m.ts), default=datetime(2000, 1, 1))
    if lang == "ko":
        out = [f"{title} 님과 카카오톡 대화", f"저장한 날짜 : {saved:%Y-%m-%d %H:%M:%S}", ""]
    else:
        out = [f"Talk with {title}", f"Date Saved : {saved:%Y-%m-%d %H:%M:%S}", ""]
    day = None
    for m in messages:
        if m.ts is None and m.speaker:
            raise ValueError(f"{m.source}:{m.line}: this export format needs a timestamp")
        if m.ts is not None and m.ts.date() != day:
            day = m.ts.date()
            out.append(_separator(day, lang))
        # join/leave lines print no time
        out.append(f"[{m.speaker}] [{_time(m.ts, lang)}] {m.text}" if m.speaker else m.text)
    nl = "\r\n" if crlf else "\n"
    return nl.join(out) + nl


FORMAT = Format("kakao_windows", detect, parse, write)
