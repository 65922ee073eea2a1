"""Exports whose every record starts with a full date+time (Android and iOS).

A record is ``<timestamp>, <name> : <text>`` (a message), ``<timestamp>: <text>``
(a system line: invites, leaves, kicks) or ``<timestamp>, <text>`` where the text
is a known system line (newer Android: ``…, A님이 B님, C님과 D님을 초대했습니다.``;
anything else in that shape is unparsed). Only the timestamp syntax differs
between platforms and UI languages, so each is a :class:`Variant` and one
classifier tries them. Timestamps are cached by their exact text, and a new
minute reuses the already parsed day and clock text (two dict lookups).

iOS Korean also prints time-only records (``오후 8:36, name : text``) under a
``2021년 12월 29일 수요일`` line: such a variant has no date in its timestamp and
takes the day from the last date line, like the Windows PC export.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable

from data_prep.formats._common import (
    BAD, DATE, MESSAGE, MONTH_FULL, MONTH_RE, MONTHS, SYSTEM, WEEKDAYS_EN, WEEKDAYS_KO,
    Classify, FastPath, ParseResult, Progress, hour24, is_system_text, parse_lines, system_kind, time_on_day,
)
from data_prep.records import Message

HEAD_SCAN = 500  # lines searched for the first record, to pick the fast-path variant

_AMPM = r"AM|PM|am|pm|a\.m\.|p\.m\."
# Newer iOS and Android builds put a narrow no-break space (U+202F) before AM/PM.
_SP = "[ \u202f\u00a0]"
# After the timestamp: ", name : text" (name lazy: bodies may contain " : "), ": system text"
# or ", system text" (checked against SYSTEM_KINDS: not every such line is one).
_REST = r"(?:, (?P<name>.+?) :(?: |$)(?P<text>.*)|: (?P<sys>.*)|, (?P<csys>.+))$"
_MESSAGE_REST = r", (?P<name>.+?) :(?: |$)(?P<text>.*)$"
_WD_EN = "|".join(WEEKDAYS_EN)
_WD_KO = "|".join(WEEKDAYS_KO)
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset(m[0] for m in MONTHS) | frozenset(w[0] for w in WEEKDAYS_EN)


@dataclass(frozen=True)
class Variant:
    """One timestamp syntax: the record regex, date-line regexes, and the chars a record can start with."""

    name: str
    record: re.Pattern  # groups: ts (date, time), y, mo|mon, d, ap|ap2, h, mi, name, text, sys, csys
    dates: tuple[re.Pattern, ...]  # lines that only mark a new day
    shape: re.Pattern  # a timestamp at line start: not a record -> unparsed, not body text
    first: frozenset[str]
    multiline: re.Pattern  # ``record`` for finditer over the whole text (messages only)


def _variant(name: str, ts: str, dates: tuple[str, ...], first: frozenset[str]) -> Variant:
    ts_re = f"(?P<ts>{ts})"
    return Variant(name, re.compile(f"^{ts_re}{_REST}"), tuple(re.compile(f"^{d}$") for d in dates),
                   re.compile(f"^{ts_re}[,:]"), first, re.compile(f"^{ts_re}{_MESSAGE_REST}", re.M))


_TIME12_KO = r"(?P<time>(?:(?P<ap>오전|오후) )?(?P<h>\d{1,2}):(?P<mi>\d{2}))"
_TIME_EN = rf"(?P<time>(?P<h>\d{{1,2}}):(?P<mi>\d{{2}})(?:{_SP}(?P<ap2>{_AMPM}))?)"
_KO_DATE = r"\d{4}년 \d{1,2}월 \d{1,2}일"
_KO_DAY_LINE = rf"(?P<y>\d{{4}})년 (?P<mo>\d{{1,2}})월 (?P<d>\d{{1,2}})일 (?:{_WD_KO})"

ANDROID_KO = _variant(
    "ko",
    rf"(?P<date>(?P<y>\d{{4}})년 (?P<mo>\d{{1,2}})월 (?P<d>\d{{1,2}})일) {_TIME12_KO}",
    (rf"{_KO_DATE}(?: (?:{_WD_KO}))?", rf"{_KO_DATE} (?:(?:오전|오후) )?\d{{1,2}}:\d{{2}}"),
    _DIGITS,
)
IOS_KO = _variant(
    "ko",
    rf"(?P<date>(?P<y>\d{{4}})\. (?P<mo>\d{{1,2}})\. (?P<d>\d{{1,2}})\.) {_TIME12_KO}",
    (rf"{_KO_DATE}(?: (?:{_WD_KO}))?", r"\d{4}\. \d{1,2}\. \d{1,2}\.(?: (?:" + _WD_KO + "))?"),
    _DIGITS,
)
# iOS Korean, time only: "오후 8:36, name : text" under "2021년 12월 29일 수요일"
IOS_KO_TIME = _variant(
    "ko-time",
    r"(?P<time>(?P<ap>오전|오후) (?P<h>\d{1,2}):(?P<mi>\d{2}))",
    (_KO_DAY_LINE,),
    frozenset("오"),
)
# "February 10, 2016, 2:33 AM" and, 2023+, "June 3, 2024 at 8:34\u202fpm" (Android);
# "Jul 9, 2015, 8:34 PM", "Oct 19, 2022 2:18 AM", "Sep 21, 2026 at 12:42\u202fAM", "Feb 1, 2026 at 20:35" (iOS)
ENGLISH_MDY = _variant(
    "en",
    rf"(?P<date>(?P<mon>{MONTH_RE}) (?P<d>\d{{1,2}}), (?P<y>\d{{4}}))(?:,| at)? {_TIME_EN}",
    (rf"(?:(?:{_WD_EN}), )?(?:{MONTH_RE}) \d{{1,2}}, \d{{4}}",
     rf"(?:{MONTH_RE}) \d{{1,2}}, \d{{4}}(?:,| at)? \d{{1,2}}:\d{{2}}(?:{_SP}(?:{_AMPM}))?"),
    _LETTERS,
)
# Android English 2013-2015, time first: "8:34pm, July 9, 2015, name : text", day lines "8:34pm, July 9, 2015"
ENGLISH_TIME_FIRST = _variant(
    "en-time-first",
    rf"(?P<time>(?P<h>\d{{1,2}}):(?P<mi>\d{{2}}) ?(?P<ap2>{_AMPM})), "
    rf"(?P<date>(?P<mon>{MONTH_RE}) (?P<d>\d{{1,2}}), (?P<y>\d{{4}}))",
    (rf"\d{{1,2}}:\d{{2}} ?(?:{_AMPM}), (?:{MONTH_RE}) \d{{1,2}}, \d{{4}}",),
    _DIGITS,
)
# "10 February 2016, 14:33" (day-month-year locales, 12 or 24 hour)
ENGLISH_DMY = _variant(
    "dmy",
    rf"(?P<date>(?P<d>\d{{1,2}}) (?P<mon>{MONTH_RE}) (?P<y>\d{{4}})),? {_TIME_EN}",
    (rf"(?:(?:{_WD_EN}),? )?\d{{1,2}} (?:{MONTH_RE}) \d{{4}}",),
    _DIGITS | _LETTERS,
)

_MISS = object()
_DAY_LINE = re.compile(f"^{_KO_DAY_LINE}$")  # sets the day of time-only records
_DATE_REC = (DATE,)
_BAD_REC = (BAD,)


def _date(m: re.Match) -> date:
    g = m.groupdict()
    return date(int(g["y"]), int(g["mo"]) if g.get("mo") else MONTHS[g["mon"]], int(g["d"]))


def _hour_minute(m: re.Match) -> tuple[int, int]:
    g = m.groupdict()
    minute = int(g["mi"])
    if minute > 59:
        raise ValueError(f"minute {minute}")
    return hour24(g.get("ap") or g.get("ap2"), int(g["h"])), minute


def _timestamp_maker():
    """``(timestamp(match), days, times)``: a day or clock text is parsed once, then looked up.

    ``days`` maps date text to its midnight and ``times`` clock text to the
    time since midnight; a new minute is two lookups and an addition.
    """
    days: dict[str, datetime] = {}
    times: dict[str, timedelta] = {}

    def timestamp(m: re.Match) -> datetime:
        date_text, time_text = m.group("date", "time")
        midnight = days.get(date_text)
        if midnight is None:
            d = _date(m)
            midnight = datetime(d.year, d.month, d.day)
        offset = times.get(time_text)
        if offset is None:
            h, mi = _hour_minute(m)
            offset = times[time_text] = timedelta(hours=h, minutes=mi)
        days[date_text] = midnight  # only once both parts are valid (the fast path trusts these)
        return midnight + offset

    return timestamp, days, times


def make_classifier(variants: tuple[Variant, ...]) -> tuple[Classify, Callable[[Variant], FastPath]]:
    """``(classify(line), fast_path(variant))`` for :func:`parse_lines` over ``variants``.

    The variant that matched last is tried first with one regex call; the
    others (and date lines) only when it fails.
    """
    cache: dict[str, datetime | None] = {}
    primary = [variants[0].record.match]
    _timestamp, days, times = _timestamp_maker()
    time_only = {v.record for v in variants if "date" not in v.record.groupindex}
    # time-only records: midnight of the last day line (once set, never None again)
    day: list[datetime | None] = [None]
    clock, offsets = time_on_day(day, 1, _hour_minute)

    def stamp(m: re.Match):
        key = m.group(1)
        ts = cache.get(key, _MISS)
        if ts is _MISS:
            try:
                ts = _timestamp(m)
            except ValueError:  # 오후 13:00, 2월 30일 ... looks like a record, is not one
                ts = None
            cache[key] = ts
        return _MISS if ts is None else ts

    def record(m: re.Match):
        if m.re in time_only:
            try:
                ts = clock(m)
            except ValueError:
                return _BAD_REC
        elif (ts := stamp(m)) is _MISS:
            return _BAD_REC
        name, text, sys_text, csys = m.group("name", "text", "sys", "csys")
        if name is not None:
            return (MESSAGE, ts, name, text)
        if sys_text is not None:
            return (SYSTEM, ts, sys_text)
        return (SYSTEM, ts, csys) if system_kind(csys) else _BAD_REC

    def date_line(line: str):
        m = _DAY_LINE.match(line)
        if m is not None:
            try:
                day[0] = datetime(int(m.group("y")), int(m.group("mo")), int(m.group("d")))
            except ValueError:  # 2월 30일
                return _BAD_REC
        return _DATE_REC

    def classify(line: str):
        m = primary[0](line)
        if m is not None:
            return record(m)
        c = line[:1]
        for v in variants:
            if c not in v.first:
                continue
            m = v.record.match(line)
            if m is not None:
                primary[0] = v.record.match
                return record(m)
            if any(d.match(line) for d in v.dates):
                return date_line(line)
            if v.shape.match(line):
                return _BAD_REC
        if c == "Y" and is_system_text(line):  # the report-abuse notice, printed without time
            return (SYSTEM, None, line)
        return None

    def fast_path(v: Variant) -> FastPath:
        index = v.multiline.groupindex
        groups = (index["ts"], index["name"], index["text"])
        if v.record in time_only:
            return FastPath(v.multiline, groups, offsets, clock, day)
        # date and clock looked up apart: nearly every record starts a new minute
        return FastPath(v.multiline, (index["time"], *groups[1:]), times, _timestamp, dates=(index["date"], days))

    return classify, fast_path


def parse_stamped(lines: list[str], source: str, variants: tuple[Variant, ...],
                  progress: Progress | None = None) -> ParseResult:
    """:func:`parse_lines` with the fast path on the variant of the first record line."""
    classify, fast_path = make_classifier(variants)
    head = lines[:HEAD_SCAN]
    primary = next((v for line in head for v in variants if v.record.match(line)), None)
    return parse_lines(lines, source, classify, fast_path(primary) if primary else None, progress)


def detect_any(head: list[str], variants: tuple[Variant, ...]) -> bool:
    """True when a head line is a message or system record of one of ``variants``."""
    return any(v.record.match(line) for line in head for v in variants)


def english_months(head: list[str]) -> str | None:
    """"full" (Android: February) or "abbr" (iOS: Feb) for English month-first heads, else None.

    "at" before the time no longer tells them apart (Android 2023+ prints it
    too): the month does. A head whose only month is May: lower-case am/pm is
    Android, "at" is iOS.
    """
    matches = [m for m in map(ENGLISH_MDY.record.match, head) if m]
    for m in matches:
        if m.group("mon") != "May":
            return "full" if m.group("mon") in MONTH_FULL else "abbr"
    if not matches:
        return None
    ts = matches[0].group("ts")
    return "abbr" if " at " in ts and not ts.endswith(("am", "pm")) else "full"


def write_stamped(messages: list[Message], stamp: Callable[[datetime], str], day_line: Callable[[date], str],
                  header: list[str]) -> str:
    """Render messages as a timestamped export; ``stamp(ts)``/``day_line(date)`` give the locale."""
    out = list(header)
    day = None
    for m in messages:
        if m.ts is None:
            raise ValueError(f"{m.source}:{m.line}: this export format needs a timestamp")
        if m.ts.date() != day:
            day = m.ts.date()
            out.append(day_line(day))
        if m.speaker:
            out.append(f"{stamp(m.ts)}, {m.speaker} : {m.text}")
        else:
            out.append(f"{stamp(m.ts)}: {m.text}")
    return "\n".join(out) + "\n"
