"""KakaoTalk for iOS ``.txt`` exports (Korean 12/24-hour and English UIs).

    KakaoTalk_Chat_민수_2023-05-02-20-07-15.txt      <- some exports start with their file name
    민수 님과 카카오톡 대화
    저장한 날짜 : 2023. 5. 2. 오후 8:07

    2023년 5월 2일 화요일
    2023. 5. 2. 오후 8:06, 민수 : 안녕
    2023. 5. 2. 오후 8:07: 철수님이 나갔습니다.

24-hour UI: ``2023. 5. 2. 20:06, name : text``; some builds print only the
time, ``오후 8:36, name : text``, under ``2021년 12월 29일 수요일`` day lines. English UI:
``Jul 9, 2015, 8:34 PM, name : text``, ``Oct 19, 2022 2:18 AM, name : text``,
``Sep 21, 2026 at 12:42\u202fAM, name : text`` or 24-hour ``Feb 1, 2026 at 20:35, name : text``.
"""
from __future__ import annotations

from datetime import datetime

from data_prep.formats._common import MONTH_FULL, WEEKDAYS_EN, WEEKDAYS_KO, Format, ParseResult, Progress
from data_prep.formats._stamped import (
    ENGLISH_MDY, IOS_KO, IOS_KO_TIME, detect_any, english_months, parse_stamped, write_stamped,
)
from data_prep.records import Message

VARIANTS = (IOS_KO, IOS_KO_TIME, ENGLISH_MDY)


def detect(head: list[str]) -> bool:
    return detect_any(head, (IOS_KO, IOS_KO_TIME)) or english_months(head) == "abbr"


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    return parse_stamped(lines, source, VARIANTS, progress)


def _stamp_ko(ts: datetime, clock: int) -> str:
    day = f"{ts.year}. {ts.month}. {ts.day}."
    if clock == 24:
        return f"{day} {ts.hour}:{ts.minute:02d}"
    return f"{day} {'오후' if ts.hour >= 12 else '오전'} {ts.hour % 12 or 12}:{ts.minute:02d}"


def _stamp_en(ts: datetime, at: bool) -> str:
    sep = " at" if at else ","
    ampm = "PM" if ts.hour >= 12 else "AM"
    return f"{MONTH_FULL[ts.month - 1][:3]} {ts.day}, {ts.year}{sep} {ts.hour % 12 or 12}:{ts.minute:02d} {ampm}"


def write(messages: list[Message], locale: str = "ko", clock: int = 12, at: bool = False,
          title: str = "대화상대") -> str:
    """Render as an iOS export; ``locale`` ko|en, ``clock`` 12|24 (ko), ``at`` ("Jul 9, 2015 at 8:34 PM")."""
    if locale == "ko":
        def stamp(ts: datetime) -> str:
            return _stamp_ko(ts, clock)
        day_line = lambda d: f"{d.year}년 {d.month}월 {d.day}일 {WEEKDAYS_KO[d.weekday()]}"  # noqa: E731
        title_line, saved = f"{title} 님과 카카오톡 대화", "저장한 날짜 : "
    else:
        def stamp(ts: datetime) -> str:
            return _stamp_en(ts, at)
        day_line = lambda d: f"{WEEKDAYS_EN[d.weekday()]}, {MONTH_FULL[d.month - 1]} {d.day}, {d.year}"  # noqa: E731
        title_line, saved = f"Talk with {title}", "Date Saved : "
    last = messages[-1].ts if messages else datetime(2000, 1, 1)
    return write_stamped(messages, stamp, day_line, [title_line, saved + stamp(last), ""])


FORMAT = Format("kakao_ios", detect, parse, write)
