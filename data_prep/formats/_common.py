"""Shared machinery of the line-based export parsers.

A text export is a sequence of *records* (a line that starts a message, a
system line, a date separator, a header line). Every other non-blank line
continues the body of the message above it; before any message it is
unparsed. :func:`parse_lines` runs that state machine once for every text
format; a format supplies ``classify(line)`` and, for speed, a regex of its
message line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from data_prep.records import Message

KINDS = ("message", "continuation", "header", "date", "system", "blank", "unparsed")

# What ``classify`` returns: None (not a record) or one of these tuples.
MESSAGE, SYSTEM, DATE, BAD = "message", "system", "date", "bad"
_BAD_REC = (BAD,)
Record = tuple  # (MESSAGE, ts, speaker, text) | (SYSTEM, ts, text) | (DATE,) | (BAD,)
Classify = Callable[[str], "Record | None"]
ParseResult = tuple[list[Message], dict[str, int], list[tuple[int, str]]]
Progress = Callable[[int], None]  # called with characters of text done since the last call
PROGRESS_EVERY = 1 << 15  # message records between two progress calls

_AM = frozenset(("오전", "AM", "am", "a.m.", "A.M."))
_PM = frozenset(("오후", "PM", "pm", "p.m.", "P.M."))

MONTH_FULL = ("January", "February", "March", "April", "May", "June", "July",
              "August", "September", "October", "November", "December")
MONTHS = {name: i for i, full in enumerate(MONTH_FULL, 1) for name in (full, full[:3], full[:3] + ".")}
MONTHS["Sept"] = 9
MONTH_RE = "|".join(sorted(map(re.escape, MONTHS), key=len, reverse=True))  # longest first
WEEKDAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAYS_KO = ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일")

# Lines that start an export: the title and the save date. They may repeat
# mid-file when several exports were pasted together. Titles seen: "ROOM 님과 카카오톡 대화",
# "KakaoTalk Chats with ROOM", "KakaoTalk Chats ROOM (24)", "ROOM with KakaoTalk Chats" (PC), "Talk with ROOM".
_TITLE_ENDS = ("카카오톡 대화", "카카오톡 대화방", "KakaoTalk Chats")
_TITLE_STARTS = ("Talk with ", "KakaoTalk Chats ", "Chat with ", "KakaoTalk Chat with ")
_SAVED_STARTS = ("저장한 날짜", "Date Saved", "Date saved", "Saved Date")
_FILE_NAME = re.compile(r"^\S.*\.(?:txt|csv)$", re.I)

# System lines by kind, Korean and English UI: the text after the timestamp (or the
# whole line where the export prints none). Names may hold spaces, commas, ♡ and 님.
SYSTEM_KINDS: dict[str, str] = {
    "invite": r".+님이 .+님을 초대(?:했|하였)습니다\.|.+ invited .+\.",
    "join": r".+님이 들어왔습니다\.|.+ joined (?:this|the) chatroom\.",
    "leave": r".+님이 나갔습니다\.|.+ left (?:this|the) chatroom\.",
    "kick": r".+님을 내보냈습니다\.|.+ (?:has been|was) (?:removed|kicked) from (?:this|the) chatroom\.",
    "hidden": r"채팅방 관리자가 메시지를 가렸습니다\.|This message has been hidden by the chatroom managers?\.",
    # the report-abuse notice Android English prints (older builds: "from using the service")
    "notice": r"You may temporarily be banned from using (?:KakaoTalk|the service) .+",
}
OTHER_SYSTEM = "other"  # a system line of no known kind (iOS/Android ``time: text`` lines, CSV rows without user)
_SYSTEM_KIND = re.compile("|".join(f"(?P<{k}>{p})" for k, p in SYSTEM_KINDS.items()), re.DOTALL)
# Lines without timestamp taken as system lines (Windows PC join/leave lines, the notice).
# Narrower than SYSTEM_KINDS: an untimed "I invited A and B." is more likely body text.
SYSTEM_TEXT = re.compile(
    r"^(?:.+님(?:이|을)? .*(?:들어왔습니다|나갔습니다|초대했습니다|초대하였습니다|내보냈습니다)\."
    r"|.+ (?:joined|left) this chatroom\."
    r"|.+ invited .+ to (?:this|the) chatroom\."
    r"|.+ (?:has been|was) (?:removed|kicked) from this chatroom\."
    r"|채팅방 관리자가 메시지를 가렸습니다\.)$"
)
NOTICE = re.compile(f"^(?:{SYSTEM_KINDS['notice']})$")


def system_kind(text: str) -> str | None:
    """The kind of a system line's text (SYSTEM_KINDS), None when it is none of them."""
    m = _SYSTEM_KIND.fullmatch(text)
    return m.lastgroup if m else None


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
    """A join/leave/invite line or the report-abuse notice without timestamp (cheap tests first)."""
    if line.startswith("You may"):
        return NOTICE.match(line) is not None
    return line.endswith(".") and SYSTEM_TEXT.match(line) is not None


def is_saved_line(line: str) -> bool:
    return line.startswith(_SAVED_STARTS) and ":" in line


def is_title_line(line: str) -> bool:
    s = line.strip()
    return s.endswith(_TITLE_ENDS) or s.startswith(_TITLE_STARTS)


def is_header(lines: list[str], i: int, before_first: bool) -> bool:
    """Whether line ``i`` is a header line (title, save date, iOS file name).

    A title line mid-file could be message text ("Talk with me"), so it counts
    only before the first message or when a save-date line follows it.
    """
    line = lines[i]
    if is_saved_line(line):
        return True
    if is_title_line(line):
        if before_first:
            return True
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        return j < len(lines) and is_saved_line(lines[j])
    # iOS exports may start with their own file name
    return before_first and _FILE_NAME.match(line.strip()) is not None


@dataclass(frozen=True)
class Format:
    """One export format: sniff it, parse it, write it (for converters, benchmarks, round trips)."""

    name: str
    detect: Callable[[list[str]], bool]  # head_lines (first non-blank lines) -> is this format?
    parse: Callable[..., ParseResult]  # (lines, source, progress=None) -> messages, line_kinds, unparsed
    write: Callable[..., str]  # (messages, **opts) -> export text


@dataclass(frozen=True)
class FastPath:
    """Message lines found at C speed: one ``finditer`` over the text instead of a call per line."""

    pattern: re.Pattern  # one message line, compiled with re.M
    groups: tuple[int, int, int]  # group numbers of (timestamp text, speaker, body)
    cache: dict  # timestamp text -> datetime (with ``day``: -> timedelta); shared with the format's classify
    timestamp: Callable[[re.Match], "datetime | None"]  # on a cache miss; ValueError: not a record
    # Formats whose records print only the time (Windows PC): [midnight of the current
    # date], set by classify at each date line. Then ``cache`` holds offsets from it,
    # filled by ``timestamp`` itself, and the loop adds them (no per-day cache to refill).
    day: list | None = None
    # Formats whose records print date and time (Android, iOS), where nearly every minute is
    # new: ``groups[0]`` is then the clock text, ``cache`` clock text -> offset from midnight
    # and ``dates`` (group number, date text -> midnight), both filled by ``timestamp``.
    dates: tuple[int, dict] | None = None


def parse_lines(lines: list[str], source: str, classify: Classify, fast: FastPath | None = None,
                progress: Progress | None = None) -> ParseResult:
    """Run the record/continuation state machine over ``lines`` with a format's ``classify``.

    With ``fast``, message lines are found by one ``finditer`` over the joined
    text and only the lines between two matches (dates, system lines, bodies)
    go through ``classify``. Same result, a few times faster on big exports.
    ``progress`` (fast path only) gets the characters scanned, every few
    thousand records, so a progress bar moves during one big file.
    """
    messages: list[Message] = []
    append = messages.append
    kinds = dict.fromkeys(KINDS, 0)
    unparsed: list[tuple[int, str]] = []
    n_messages = 0
    cur = None  # the open message record: (MESSAGE, ts, speaker, first body line)
    cur_line = 0
    body: list[str] | None = None  # its continuation lines
    blanks: list[str] = []  # blank lines after it: body text only if a continuation follows
    last_ts = None

    def close() -> None:
        nonlocal cur, body, blanks
        if cur is not None:
            text = cur[3] if body is None else "\n".join([cur[3], *body]).strip("\n")
            append(Message(cur[1], cur[2], text, source, cur_line))
            cur = body = None
        if blanks:
            kinds["blank"] += len(blanks)
            blanks = []

    def other(i: int, line: str, rec: Record | None) -> None:
        """Any line but a message header: blank, header, continuation, system, date, unparsed."""
        nonlocal body, blanks, last_ts
        if rec is None:
            if not line.strip():
                if cur is not None:
                    blanks.append(line)
                else:
                    kinds["blank"] += 1
            elif is_header(lines, i, before_first=cur is None and not messages):
                close()
                kinds["header"] += 1
            elif cur is not None:
                if body is None:
                    body = []
                if blanks:
                    body += blanks
                    kinds["continuation"] += len(blanks)
                    blanks = []
                body.append(line)
                kinds["continuation"] += 1
            else:
                kinds["unparsed"] += 1
                unparsed.append((i + 1, line))
            return
        if cur is not None:
            last_ts = cur[1] or last_ts
        close()
        kind = rec[0]
        if kind is SYSTEM:
            last_ts = rec[1] or last_ts  # Windows join/leave lines print no time: keep the last one
            append(Message(last_ts, "", rec[2], source, i + 1))
            kinds["system"] += 1
        elif kind is DATE:
            kinds["date"] += 1
        else:
            kinds["unparsed"] += 1
            unparsed.append((i + 1, line))

    def scan(start: int, stop: int) -> None:
        nonlocal cur, cur_line, body, n_messages
        for i in range(start, stop):
            line = lines[i]
            rec = classify(line)
            if rec is not None and rec[0] is MESSAGE:
                close()
                cur, cur_line, body = rec, i + 1, None
                n_messages += 1
            else:
                other(i, line, rec)

    if fast is None:
        scan(0, len(lines))
    else:
        (g_time, g_name, g_text), cache, timestamp, day = fast.groups, fast.cache, fast.timestamp, fast.day
        cache_get = cache.get
        g_date, dates_get = (fast.dates[0], fast.dates[1].get) if fast.dates else (0, None)
        keep = day is None and dates_get is None  # ``cache`` maps the key to the whole timestamp
        # Message(...) minus the NamedTuple's Python-level __new__ (nothing to check): 0.2 vs 0.35 us
        new_tuple = tuple.__new__
        # split_lines keeps the text it split (data_prep.encoding.Lines): no second join
        text = getattr(lines, "text", None) or "\n".join(lines) + "\n"
        count = text.count
        i = pos = reported = 0
        for m in fast.pattern.finditer(text):
            start, end = m.span()
            if start != pos:  # lines between two message headers
                gap = count("\n", pos, start)
                scan(i, i + gap)
                i += gap
            pos = end + 1
            key, name, body_text = m.group(g_time, g_name, g_text)
            ts = cache_get(key)
            if ts is not None and not keep:  # an offset: add the day's midnight
                if day is not None:
                    ts = day[0] + ts
                else:
                    midnight = dates_get(m.group(g_date))
                    ts = None if midnight is None else midnight + ts
            if ts is None:
                try:
                    ts = timestamp(m)
                except ValueError:  # [오후 27:15], 2월 30일: looks like a record, is not one
                    other(i, lines[i], _BAD_REC)
                    i += 1
                    continue
                if ts is not None and keep:
                    cache[key] = ts
            if cur is not None:
                if body is None and not blanks:  # the common case, inlined
                    append(new_tuple(Message, (cur[1], cur[2], cur[3], source, cur_line)))
                else:
                    close()
            cur, cur_line, body = (MESSAGE, ts, name, body_text), i + 1, None
            n_messages += 1
            i += 1
            if progress is not None and not n_messages % PROGRESS_EVERY:
                progress(pos - reported)
                reported = pos
        scan(i, len(lines))
    close()
    kinds["message"] = n_messages
    return messages, kinds, unparsed


def time_on_day(day: list, group: int, hour_minute: Callable[[re.Match], tuple[int, int]]):
    """``(timestamp, offsets)`` for records that print only the time (Windows PC, iOS time-only lines).

    ``timestamp(match)`` is the record's time on the last date line's day (``day[0]``, its
    midnight; None before any date line). Each clock text (match group ``group``) is parsed once
    by ``hour_minute`` into its offset from midnight; ``offsets`` is that cache, shared with a
    :class:`FastPath` whose loop adds the offsets to ``day[0]`` itself. Filled only once a day is
    known, so a hit always has a day to add to.
    """
    offsets: dict[str, timedelta] = {}

    def timestamp(m: re.Match) -> datetime | None:
        midnight = day[0]
        if midnight is None:
            return None
        offset = offsets.get(m.group(group))
        if offset is None:
            h, mi = hour_minute(m)
            offset = offsets[m.group(group)] = timedelta(hours=h, minutes=mi)
        return midnight + offset

    return timestamp, offsets
