"""Chat-export readers: one conversation in every format parses to one expected list.

The golden fixtures under ``fixtures/exports/`` are the same short Korean chat
(오전 12시 and 오후 12시, a multi-line body with a typed ``-----`` line, `` : `` in
a body, an emoji in a name, join/leave lines, 삭제된 메시지, 사진, 이모티콘) as
each KakaoTalk platform/UI/locale writes it, plus generic CSV/JSONL.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from data_prep.errors import ParseError
from data_prep.formats import PARSERS, ParsedFile, parse_text, read_export
from data_prep.formats._table import parse_timestamp
from data_prep.records import Message

FIXTURES = Path(__file__).parent / "fixtures" / "exports"
FORMAT_OF = {
    "kakao_windows_ko.txt": "kakao_windows", "kakao_windows_en.txt": "kakao_windows",
    "kakao_macos.csv": "kakao_macos", "kakao_macos_ko.csv": "kakao_macos",
    "kakao_android_ko.txt": "kakao_android", "kakao_android_en.txt": "kakao_android",
    "kakao_android_dmy.txt": "kakao_android",
    "kakao_ios_ko.txt": "kakao_ios", "kakao_ios_ko_24h.txt": "kakao_ios",
    "kakao_ios_en.txt": "kakao_ios", "kakao_ios_en_at.txt": "kakao_ios",
    # forms seen in real exports or described by public parsers (issue #15)
    "kakao_android_en_2014.txt": "kakao_android",  # 2013-2015: "8:34pm, July 9, 2015, name : text"
    "kakao_android_en_at.txt": "kakao_android",  # 2023+: "June 30, 2024 at 11:58\u202fpm", system after a comma
    "kakao_android_ko_2023.txt": "kakao_android",  # system lines after a comma
    "kakao_ios_en_2022.txt": "kakao_ios",  # "Jun 30, 2024 11:58 PM" (no comma before the time)
    "kakao_ios_en_nnbsp.txt": "kakao_ios",  # "Jun 30, 2024 at 11:58\u202fPM"
    "kakao_ios_en_24h.txt": "kakao_ios",  # "Jun 30, 2024 at 23:58"
    "kakao_ios_ko_time.txt": "kakao_ios",  # "오후 11:58, name : text" under "2024년 6월 30일 일요일"
    "kakao_windows_en_pc.txt": "kakao_windows",  # first line "ROOM with KakaoTalk Chats"
    "kakao_macos_noheader.csv": "kakao_macos",  # no Date,User,Message row
    "generic.jsonl": "generic_jsonl", "generic.csv": "generic_csv",
}
# The English UI names the exporting user "You" and prints placeholders and
# system lines in English; the Korean expected list uses the Korean UI's words.
ENGLISH_UI = {
    "You": "회원님", "Photo": "사진", "Emoticon": "이모티콘",
    "This message has been deleted.": "삭제된 메시지입니다.",
    "박서준 joined this chatroom.": "박서준님이 들어왔습니다.",
    "박서준 left this chatroom.": "박서준님이 나갔습니다.",
}
# Windows PC join/leave lines print no time (they inherit the previous record's).
NO_SYSTEM_TIME = {"kakao_windows"}


def expected() -> list[dict]:
    lines = (FIXTURES / "expected.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def as_records(parsed: ParsedFile, speaker_map: dict[str, str] | None = None) -> list[dict]:
    """Messages in the expected.jsonl shape, English UI words mapped to the Korean ones."""
    speaker_map = speaker_map or {}
    out = []
    for m in parsed.messages:
        speaker = ENGLISH_UI.get(m.speaker, m.speaker)
        out.append({
            "ts": None if (not m.speaker and parsed.format in NO_SYSTEM_TIME) else m.ts.isoformat(),
            "speaker": speaker_map.get(speaker, speaker),
            "text": ENGLISH_UI.get(m.text, m.text),
        })
    return out


def expected_for(parsed: ParsedFile) -> list[dict]:
    exp = expected()
    if parsed.format in NO_SYSTEM_TIME:
        exp = [{**e, "ts": None} if not e["speaker"] else e for e in exp]
    return exp


def assert_accounted(parsed: ParsedFile) -> None:
    assert sum(parsed.line_kinds.values()) == parsed.lines
    assert parsed.line_kinds["unparsed"] == len(parsed.unparsed)


@pytest.mark.parametrize("name", sorted(FORMAT_OF))
def test_golden_fixture_parses_to_expected(name: str) -> None:
    parsed = read_export(FIXTURES / name)
    assert parsed.format == FORMAT_OF[name]
    assert parsed.encoding == "utf-8"
    assert as_records(parsed) == expected_for(parsed)
    assert_accounted(parsed)
    assert parsed.unparsed == []
    assert parsed.line_kinds["message"] == 11 and parsed.line_kinds["system"] == 2
    assert parsed.system_kinds == {"join": 1, "leave": 1}
    # the multi-line body: 4 physical continuation lines (CSV: inside the quotes; JSONL: escaped)
    assert parsed.line_kinds["continuation"] == (0 if parsed.format == "generic_jsonl" else 4)
    assert all(m.source == str(FIXTURES / name) and m.line > 0 for m in parsed.messages)


def test_fixtures_cover_every_registered_format() -> None:
    assert set(FORMAT_OF.values()) == set(PARSERS)
    assert set(FORMAT_OF) == {p.name for p in FIXTURES.iterdir() if p.is_file()} - {"expected.jsonl"}


# System lines of every kind, as real exports print them: (format, speaker messages, system lines by kind)
SYSTEM_FIXTURES = {
    # Android Korean: invitations of several people (names with spaces, ♡ and 님), leaves, a kick, hidden
    "android_ko_invites.txt": ("kakao_android", 5, {"invite": 2, "leave": 2, "kick": 1, "hidden": 1}),
    # Android English 2023+: "KakaoTalk Chats ROOM (24)", the report-abuse notice, joined/invited/hidden/left
    "android_en_notices.txt": ("kakao_android", 3, {"invite": 1, "join": 1, "leave": 1, "hidden": 1, "notice": 1}),
    # Android English 2014: "KakaoTalk Chats Team", upper-case PM without space, the older notice wording
    "android_en_2014_team.txt": ("kakao_android", 2, {"invite": 1, "leave": 1, "notice": 1}),
    "windows_en_pc.txt": ("kakao_windows", 2, {"invite": 1}),  # first line "ROOM with KakaoTalk Chats"
    "macos_noheader.csv": ("kakao_macos", 1, {"leave": 1}),  # no header row
}


@pytest.mark.parametrize("name", sorted(SYSTEM_FIXTURES))
def test_system_lines_are_counted_by_kind_and_nothing_is_unparsed(name: str) -> None:
    fmt, n_messages, kinds = SYSTEM_FIXTURES[name]
    parsed = read_export(FIXTURES / "system" / name)
    assert parsed.unparsed == [] and parsed.format == fmt
    assert_accounted(parsed)
    assert sum(1 for m in parsed.messages if m.speaker) == n_messages == parsed.line_kinds["message"]
    assert parsed.system_kinds == kinds and parsed.line_kinds["system"] == sum(kinds.values())


def test_system_fixtures_are_all_listed() -> None:
    assert set(SYSTEM_FIXTURES) == {p.name for p in (FIXTURES / "system").iterdir()}


@pytest.mark.parametrize("stamp, text, ts", [
    ("2023년 1월 5일 오후 8:48", "엄마님이 아빠님, 김 민수♡님과 누나 님님을 초대했습니다.", datetime(2023, 1, 5, 20, 48)),
    ("8:48pm, January 5, 2023", "Mina invited Woojin and Alex.", datetime(2023, 1, 5, 20, 48)),
    ("8:48PM, January 5, 2023", "Alex left this chatroom.", datetime(2023, 1, 5, 20, 48)),
])
def test_comma_system_lines_keep_their_time_and_text(stamp: str, text: str, ts: datetime) -> None:
    parsed = parse_text(f"{stamp}, {text}\n{stamp}, 민수 : 응\n", "x.txt")
    assert [(m.ts, m.speaker, m.text) for m in parsed.messages] == [(ts, "", text), (ts, "민수", "응")]


def test_a_comma_line_that_is_no_system_line_stays_unparsed() -> None:
    text = "2023년 1월 5일 오전 8:48, 민수 : 안녕\n2023년 1월 5일 오전 8:49, 뭔지 모를 줄\n"
    parsed = parse_text(text, "x.txt")
    assert parsed.unparsed == [(2, "2023년 1월 5일 오전 8:49, 뭔지 모를 줄")]


def test_time_only_records_take_the_day_of_the_last_day_line() -> None:
    text = ("2021년 12월 29일 수요일\n오후 8:36, 민수 : 안녕\n오후 11:59, 지은 : 잘 자\n"
            "2021년 12월 30일 목요일\n오전 12:00, 민수 : 자정\n2021년 12월 32일 금요일\n")
    parsed = parse_text(text, "x.txt")
    assert [m.ts for m in parsed.messages] == [datetime(2021, 12, 29, 20, 36), datetime(2021, 12, 29, 23, 59),
                                               datetime(2021, 12, 30, 0, 0)]
    assert parsed.format == "kakao_ios" and [n for n, _ in parsed.unparsed] == [6]


@pytest.mark.parametrize("line, fmt", [
    ("May 5, 2023 at 8:34\u202fpm, 민수 : 안녕", "kakao_android"),  # Android 2023+: lower-case pm
    ("May 5, 2023 at 8:34\u202fPM, 민수 : 안녕", "kakao_ios"),
    ("May 5, 2023, 8:34 PM, 민수 : 안녕", "kakao_android"),
    ("June 5, 2023 at 8:34 PM, 민수 : 안녕", "kakao_android"),  # the full month name decides
    ("Jun 5, 2023 8:34 PM, 민수 : 안녕", "kakao_ios"),
])
def test_english_android_and_ios_are_told_apart(line: str, fmt: str) -> None:
    parsed = parse_text(line + "\n", "x.txt")
    assert parsed.format == fmt and parsed.messages[0].ts == datetime(2023, 5 if "May" in line else 6, 5, 20, 34)


def test_message_line_numbers_point_at_the_header_line() -> None:
    parsed = read_export(FIXTURES / "kakao_windows_ko.txt")
    raw = (FIXTURES / "kakao_windows_ko.txt").read_text(encoding="utf-8").splitlines()
    for m in parsed.messages:
        assert m.text.split("\n")[0] in raw[m.line - 1]


def _windows_text() -> str:
    return (FIXTURES / "kakao_windows_ko.txt").read_text(encoding="utf-8")


def test_pasted_exports_count_repeated_header_and_keep_parsing() -> None:
    text = _windows_text()
    parsed = parse_text(text + text, "pasted.txt")
    assert parsed.line_kinds["header"] == 4
    assert len(parsed.messages) == 26
    assert parsed.messages[13].text == "다들 자?"  # second export's first message, not a body line
    assert_accounted(parsed)


@pytest.mark.parametrize("first, second", [
    ("kakao_android_ko.txt", "kakao_android_en.txt"), ("kakao_ios_en.txt", "kakao_ios_ko_24h.txt"),
    ("kakao_windows_en.txt", "kakao_windows_ko.txt"),
])
def test_pasted_exports_of_two_ui_languages(first: str, second: str) -> None:
    a, b = ((FIXTURES / n).read_text(encoding="utf-8") for n in (first, second))
    parsed = parse_text(a + b, "pasted.txt")
    half = as_records(parsed)
    assert half[:13] == half[13:] == expected_for(parsed)
    assert parsed.unparsed == [] and parsed.line_kinds["header"] >= 4


GARBAGE = """\
이 파일은 백업입니다
--------------- 2024년 7월 1일 월요일 ---------------
[민수] [오후 3:15] 안녕
[철수] [오후 27:15] 시계가 고장난 줄
[철수] [어제 3:15] 이것도
[민수] [오후 3:16] 잘 가
"""


def test_garbage_lines_are_counted_and_listed() -> None:
    parsed = parse_text(GARBAGE, "garbage.txt")
    assert [m.text for m in parsed.messages] == ["안녕", "잘 가"]
    assert parsed.unparsed == [(1, "이 파일은 백업입니다"), (4, "[철수] [오후 27:15] 시계가 고장난 줄"),
                               (5, "[철수] [어제 3:15] 이것도")]
    assert_accounted(parsed)


def test_stamped_records_with_an_impossible_date_or_clock_are_unparsed() -> None:
    """The fast path looks date and clock up apart: a known clock on an impossible date is no record."""
    text = ("2024년 2월 28일 오후 3:15, 민수 : 안녕\n2024년 2월 30일 오후 3:15, 민수 : 없는 날\n"
            "2024년 2월 28일 오후 13:15, 민수 : 없는 시각\n2024년 2월 29일 오후 3:15, 민수 : 윤일\n")
    parsed = parse_text(text, "x.txt")
    assert [(m.ts, m.text) for m in parsed.messages] == [(datetime(2024, 2, 28, 15, 15), "안녕"),
                                                         (datetime(2024, 2, 29, 15, 15), "윤일")]
    assert [n for n, _ in parsed.unparsed] == [2, 3]


def test_jsonl_bad_lines_are_listed() -> None:
    good = '{"ts": "2024-07-01 15:15", "name": "민수", "content": "안녕"}'
    parsed = parse_text("not json\n" + good + "\n[1, 2]\n" + good.replace("15:15", "25:99") + "\n", "x.jsonl")
    assert parsed.format == "generic_jsonl" and len(parsed.messages) == 1
    assert [n for n, _ in parsed.unparsed] == [1, 3, 4]


def test_csv_bad_rows_are_listed() -> None:
    text = ('Date,User,Message\n2024-07-01 15:15:00,"민수","안녕"\n어제,"민수","시간이 없다"\n\n'
            '2024-07-01 15:16:00,"철수","따옴표가\n안 닫힘\n')
    parsed = parse_text(text, "x.csv")
    assert parsed.format == "kakao_macos" and [m.text for m in parsed.messages] == ["안녕"]
    assert [n for n, _ in parsed.unparsed] == [3, 5, 6]
    assert_accounted(parsed)


CSV_TIMES = ["2024-07-01 15:15:00", " 2024-07-01 15:15:01 ", "2024-07-01T15:15:02+09:00", "2024-07-01 15:15",
             "2024-07-01T15:15:03Z", "\t2024-07-01 15:15:04.5+09:00\u3000"]


def test_csv_rows_read_in_one_pass_match_the_general_timestamp_parser() -> None:
    """Timestamps as parse_timestamp reads them (padded, with offsets), line numbers and kinds
    right after multi-line bodies, a rejected row, a repeated header and short rows."""
    rows = [f'{ts},"민수","{i}"' for i, ts in enumerate(CSV_TIMES)]
    text = "\n".join(["Date,User,Message", rows[0], '2024-07-01 15:16:00,"철수","두\n줄"', rows[1],
                      '2024-07-01 15:17:00,"철"수,깨짐', rows[2], "Date,User,Message", "", rows[3],
                      '2024-07-01 15:18:00,"민수"', rows[4], '2024-07-01 15:19:00,"","민수님이 나갔습니다."',
                      rows[5], '어제,"민수","x"']) + "\n"
    parsed = parse_text(text, "x.csv")
    got = [(m.ts, m.speaker, m.text, m.line) for m in parsed.messages]
    ts = [parse_timestamp(t, {}) for t in CSV_TIMES]
    assert got == [
        (ts[0], "민수", "0", 2), (datetime(2024, 7, 1, 15, 16), "철수", "두\n줄", 3), (ts[1], "민수", "1", 5),
        (ts[2], "민수", "2", 7), (ts[3], "민수", "3", 10), (ts[4], "민수", "4", 12),
        (datetime(2024, 7, 1, 15, 19), "", "민수님이 나갔습니다.", 13), (ts[5], "민수", "5", 14)]
    assert all(t.tzinfo is None for t in ts) and ts[5] == datetime(2024, 7, 1, 15, 15, 4, 500000)
    assert [n for n, _ in parsed.unparsed] == [6, 11, 15]
    assert parsed.line_kinds == {"message": 7, "continuation": 1, "header": 2, "date": 0, "system": 1, "blank": 1,
                                 "unparsed": 3}
    assert_accounted(parsed)


def test_strict_rejects_the_first_unparsed_line() -> None:
    with pytest.raises(ParseError) as e:
        parse_text(GARBAGE, "garbage.txt", strict=True)
    assert e.value.line == 1 and "unparsed" in e.value.reason


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("\n  \n", "empty"),
    ("오늘은 날씨가 좋았다.\n산책을 했고 커피를 마셨다.\n저녁에는 책을 읽었다.\n", "not a chat export"),
    ("--------------- 2024년 7월 1일 월요일 ---------------\n박서준님이 들어왔습니다.\n", "no chat message"),
])
def test_text_that_is_not_an_export_is_rejected(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_text(text, "x.txt")
    assert reason in e.value.reason and e.value.file == "x.txt"


@pytest.mark.parametrize("fmt, line, speaker, body", [
    ("kakao_windows", "[[공지] 김 민수, 팀장] [오후 3:15] 안녕 : 반가워", "[공지] 김 민수, 팀장", "안녕 : 반가워"),
    ("kakao_windows", "[민수] [15:15] 24시간제 PC", "민수", "24시간제 PC"),
    ("kakao_android", "2024년 7월 1일 오후 3:15, 김 민수, 팀장 : 안녕 : 반가워", "김 민수, 팀장", "안녕 : 반가워"),
    ("kakao_android", "2024년 7월 1일 오후 3:15, 민수 : 사진 3장", "민수", "사진 3장"),
    ("kakao_android", "2024년 7월 1일 오후 3:15, 민수 : 파일: 보고서.pdf", "민수", "파일: 보고서.pdf"),
    ("kakao_ios", "2024. 7. 1. 오후 3:15, 민수 : 샵검색: 날씨", "민수", "샵검색: 날씨"),
    ("kakao_ios", "2024. 7. 1. 오후 3:15, 회원님 : 보이스톡 해요", "회원님", "보이스톡 해요"),
    ("kakao_android", "July 1, 2024, 3:15 PM, you : 음성메시지", "you", "음성메시지"),
    ("kakao_android", "1 July 2024, 3:15 pm, Min Su : hi", "Min Su", "hi"),
])
def test_names_and_placeholders_stay_raw(fmt: str, line: str, speaker: str, body: str) -> None:
    header = "--------------- 2024년 7월 1일 월요일 ---------------\n" if fmt == "kakao_windows" else ""
    parsed = parse_text(header + line + "\n", "x.txt")
    assert parsed.format == fmt
    (m,) = parsed.messages
    assert (m.speaker, m.text, m.ts) == (speaker, body, datetime(2024, 7, 1, 15, 15))


@pytest.mark.parametrize("separator", [
    "--------------- 2024년 7월 1일 월요일 ---------------",
    "--------------- Monday, July 1, 2024 ---------------",
    "--------------- Monday, 1 July 2024 ---------------",
])
def test_windows_date_separators_and_untimed_system_lines(separator: str) -> None:
    text = (f"{separator}\n[민수] [오전 12:00] 자정\n민수님이 지은님을 초대했습니다.\n"
            "Min Su invited Ji Eun to this chatroom.\n지은님을 내보냈습니다.\n[You] [12:00 PM] 정오\n")
    parsed = parse_text(text, "x.txt")
    assert [(m.ts, m.speaker) for m in parsed.messages] == [
        (datetime(2024, 7, 1, 0, 0), "민수"), *[(datetime(2024, 7, 1, 0, 0), "")] * 3,
        (datetime(2024, 7, 1, 12, 0), "You")]
    assert parsed.line_kinds["system"] == 3 and parsed.line_kinds["date"] == 1


def test_blank_lines_inside_a_body_are_kept_trailing_ones_are_not() -> None:
    text = "2024년 7월 1일 오후 3:15, 민수 : 첫 줄\n\n셋째 줄\n\n\n2024년 7월 1일 오후 3:16, 철수 : ㅇㅇ\n"
    parsed = parse_text(text, "x.txt")
    assert [m.text for m in parsed.messages] == ["첫 줄\n\n셋째 줄", "ㅇㅇ"]
    assert parsed.line_kinds["continuation"] == 2 and parsed.line_kinds["blank"] == 2


# --- round trips: write(messages) then parse gives the same messages -------------------------

WRITERS = [
    ("kakao_windows", {"lang": "ko"}), ("kakao_windows", {"lang": "en", "crlf": True}),
    ("kakao_android", {"locale": "ko"}), ("kakao_android", {"locale": "ko", "clock": 24}),
    ("kakao_android", {"locale": "en"}), ("kakao_android", {"locale": "dmy"}),
    ("kakao_android", {"locale": "dmy", "clock": 12}),
    ("kakao_ios", {"locale": "ko"}), ("kakao_ios", {"locale": "ko", "clock": 24}),
    ("kakao_ios", {"locale": "en"}), ("kakao_ios", {"locale": "en", "at": True}),
    ("kakao_macos", {}), ("kakao_macos", {"korean_header": True}),
    ("generic_jsonl", {}), ("generic_csv", {}),
]
NAMES = ["민수", "회원님", "You", "지은🌸", "Kim Min-su", "[공지] 봇, 알림"]
TEXTS = ["ㅋㅋㅋ", "hello there", "여러 줄\n메시지\n-----\n끝", "a : b : c", "사진", "\"따옴표\", 쉼표",
         "[민수] [오후 3:15] 처럼 생긴 본문", "2024년 7월 1일 처럼 시작", "빈 줄\n\n사이"]


def generated_messages(seed: int, n: int = 60) -> list[Message]:
    """Messages over several days hitting 오전/오후 12시, 11:59 PM and multi-line bodies."""
    rng = random.Random(seed)
    ts = datetime(2023, 12, 31, 23, 59)
    out = []
    for i in range(n):
        ts += timedelta(minutes=rng.choice([0, 1, 7, 61, 12 * 60, 24 * 60 - 1]))
        out.append(Message(ts, rng.choice(NAMES), rng.choice(TEXTS)))
    out.insert(5, Message(out[4].ts, "", "박서준님이 나갔습니다."))
    return out


@pytest.mark.parametrize("fmt, opts", WRITERS, ids=[f"{f}-{'-'.join(map(str, o.values()))}" for f, o in WRITERS])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_write_then_parse_round_trips(fmt: str, opts: dict, seed: int) -> None:
    messages = generated_messages(seed)
    text = PARSERS[fmt].write(messages, **opts)
    parsed = parse_text(text, "roundtrip")
    assert parsed.format == fmt
    assert parsed.unparsed == []
    assert_accounted(parsed)
    got = [(m.ts, m.speaker, m.text) for m in parsed.messages]
    assert got == [(m.ts, m.speaker, m.text) for m in messages]


def test_strict_error_quotes_no_text_of_the_line() -> None:
    text = PARSERS["kakao_windows"].write([Message(datetime(2024, 1, 1, 9), "민수", "안녕")])
    text = text.replace("[민수]", "김영희 010-1234-5678\n[민수]", 1)
    with pytest.raises(ParseError) as e:
        parse_text(text, "x.txt", strict=True)
    assert e.value.line == 5 and "010-1234-5678" not in str(e.value) and "김영희" not in str(e.value)


@pytest.mark.parametrize("name", ["kakao_windows_ko.txt", "kakao_macos_ko.csv"])
def test_read_export_progress_adds_up_to_the_file_size(name) -> None:
    calls: list[int] = []
    parsed = read_export(FIXTURES / name, progress=calls.append)
    assert sum(calls) == (FIXTURES / name).stat().st_size and all(c >= 0 for c in calls)
    assert parsed.messages == read_export(FIXTURES / name).messages


def test_progress_moves_during_a_big_file(tmp_path) -> None:
    from data_prep.formats._common import PROGRESS_EVERY

    t = datetime(2024, 1, 1, 9)
    msgs = [Message(t + timedelta(seconds=i), "민수" if i % 2 else "영희", f"말 {i}") for i in range(3 * PROGRESS_EVERY)]
    path = tmp_path / "big.txt"
    path.write_text(PARSERS["kakao_windows"].write(msgs), encoding="utf-8-sig")
    calls: list[int] = []
    read_export(path, progress=calls.append)
    assert len(calls) >= 3 and sum(calls) == path.stat().st_size and 0 < calls[0] < path.stat().st_size / 2
