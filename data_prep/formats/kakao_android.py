"""KakaoTalk for Android ``.txt`` exports (Korean, English and day-month-year UIs).

    민수 님과 카카오톡 대화
    저장한 날짜 : 2016년 2월 5일 오전 1:50

    2016년 2월 5일 금요일
    2016년 2월 5일 오전 1:33, 민수 : 안녕
    2016년 2월 5일 오전 1:40: 철수님이 나갔습니다.

Newer builds print system lines after a comma: ``2023년 1월 5일 오전 8:48,
A님이 B님, C님과 D님을 초대했습니다.``. English UI: ``February 10, 2016, 2:33 AM,
name : text``, 2023+ ``June 3, 2024 at 8:34\u202fpm, name : text``, and 2013-2015
time first: ``8:34pm, July 9, 2015, name : text`` under ``8:34pm, July 9, 2015``
day lines; day-month-year locales: ``10 February 2016, 14:33, name : text`` (12 or 24 hour).
"""
from __future__ import annotations

from datetime import datetime

from data_prep.formats._common import MONTH_FULL, WEEKDAYS_EN, WEEKDAYS_KO, Format, ParseResult, Progress
from data_prep.formats._stamped import (
    ANDROID_KO, ENGLISH_DMY, ENGLISH_MDY, ENGLISH_TIME_FIRST, detect_any, english_months, parse_stamped, write_stamped,
)
from data_prep.records import Message

VARIANTS = (ANDROID_KO, ENGLISH_MDY, ENGLISH_DMY, ENGLISH_TIME_FIRST)


def detect(head: list[str]) -> bool:
    return detect_any(head, (ANDROID_KO, ENGLISH_DMY, ENGLISH_TIME_FIRST)) or english_months(head) == "full"


def parse(lines: list[str], source: str, progress: Progress | None = None) -> ParseResult:
    return parse_stamped(lines, source, VARIANTS, progress)


def _stamp_ko(ts: datetime, clock: int) -> str:
    if clock == 24:
        return f"{ts.year}년 {ts.month}월 {ts.day}일 {ts.hour}:{ts.minute:02d}"
    return f"{ts.year}년 {ts.month}월 {ts.day}일 {'오후' if ts.hour >= 12 else '오전'} {ts.hour % 12 or 12}:{ts.minute:02d}"


def _time_en(ts: datetime, clock: int) -> str:
    if clock == 24:
        return f"{ts.hour:02d}:{ts.minute:02d}"
    return f"{ts.hour % 12 or 12}:{ts.minute:02d} {'PM' if ts.hour >= 12 else 'AM'}"


_LOCALES = {
    # locale: (stamp(ts, clock), day line, title, saved label)
    "ko": (_stamp_ko,
           lambda d: f"{d.year}년 {d.month}월 {d.day}일 {WEEKDAYS_KO[d.weekday()]}",
           "{} 님과 카카오톡 대화", "저장한 날짜 : "),
    "en": (lambda ts, c: f"{MONTH_FULL[ts.month - 1]} {ts.day}, {ts.year}, {_time_en(ts, c)}",
           lambda d: f"{WEEKDAYS_EN[d.weekday()]}, {MONTH_FULL[d.month - 1]} {d.day}, {d.year}",
           "KakaoTalk Chats with {}", "Date Saved : "),
    "dmy": (lambda ts, c: f"{ts.day} {MONTH_FULL[ts.month - 1]} {ts.year}, {_time_en(ts, c)}",
            lambda d: f"{WEEKDAYS_EN[d.weekday()]}, {d.day} {MONTH_FULL[d.month - 1]} {d.year}",
            "KakaoTalk Chats with {}", "Date Saved : "),
}


def write(messages: list[Message], locale: str = "ko", clock: int | None = None, title: str = "대화상대") -> str:
    """Render as an Android export; ``locale`` ko|en|dmy, ``clock`` 12|24 (dmy defaults to 24)."""
    stamp, day_line, title_fmt, saved = _LOCALES[locale]
    clock = clock or (24 if locale == "dmy" else 12)
    last = messages[-1].ts if messages else datetime(2000, 1, 1)
    header = [title_fmt.format(title), saved + stamp(last, clock), ""]
    return write_stamped(messages, lambda ts: stamp(ts, clock), day_line, header)


FORMAT = Format("kakao_android", detect, parse, write)
