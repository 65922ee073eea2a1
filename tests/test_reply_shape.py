"""One definition of empty / echo / loop (core.reply_shape), the persona's limits, the reply statistics."""
from __future__ import annotations

from core.reply_shape import read_limits
from chatbot.decoding import Candidate, _choose
from data_prep.persona_card import build_card, write_card
from core.reply_shape import (
    DEFAULT_RUNS, OTHER, RUN_CLASSES, ReplyLimits, bubbles, echo_sources, echoed_bubbles, foreign_swearing, is_echo,
    is_polite, longest_class_runs, longest_runs, loop_reason, measure_limits, new_loop, problem, swear_families,
)
from pipeline.evaluation.reply_stats import reply_stats

MINSU = ReplyLimits.from_card(measure_limits(["ㅋㅋㅋㅋ 진짜?", "응\n지금 가\n5분", "아 배고파!!", "ㅠㅠ 오늘 힘들다"]))


def test_limits_measured_per_character_class():
    m = measure_limits(["ㅋㅋㅋㅋ 진짜?", "응\n지금 가\n5분", "아 배고파!!", "ㅠㅠ 오늘 힘들다", "음.... 몰라"])
    assert m["max_runs"]["ㅋ"] == 4 and m["max_runs"]["!"] == 2 and m["max_runs"]["."] == 4
    assert m["max_runs"]["ㅠ"] == 2 and m["max_runs"]["ㅎ"] == 0 and m["max_runs"]["other"] == 1
    assert m["max_lines"] == 3 and m["burst_share"] == 0.2
    assert MINSU.cap("ㅋ") == 4 and MINSU.cap("ㅎ") == 2 and MINSU.cap("가") == 2  # never below 2


def test_class_runs_are_the_per_text_runs_merged():
    """The joined-text regex passes give what longest_runs of each text gives, merged by class."""
    texts = ["ㅋㅋㅋ\nㅋㅋ", "아아아 ㅋ", "!!?", "..~~~~", "", "  ", "a", "ㅠㅠ\n\nㅠㅠㅠ", "zzzz!!!! ???"]
    for cut in range(len(texts) + 1):
        part = texts[:cut]
        want = dict.fromkeys((*RUN_CLASSES, OTHER), 0)
        for t in part:
            for ch, n in longest_runs(t).items():
                key = ch if ch in RUN_CLASSES else OTHER
                want[key] = max(want[key], n)
        assert longest_class_runs(part) == want, part


def test_loops():
    assert loop_reason("ㅋㅋㅋㅋ", MINSU) is None and loop_reason("ㅋㅋㅋㅋㅋ", MINSU) == "run"
    assert loop_reason("ㅋㅋㅋ ㅋㅋㅋ ㅋㅋㅋ", MINSU) == "repeat"  # each run is within the cap
    assert loop_reason("배고파배고파배고파", MINSU) == "repeat"
    assert loop_reason("ㅋㅋ ㅋㅋ 진짜", MINSU) is None
    assert loop_reason("나 오늘 밥 먹었어 그리고 나 오늘 밥 먹었어", MINSU) == "ngram"
    assert loop_reason("a\nb\nc", MINSU) is None and loop_reason("a\nb\nc\nd", MINSU) == "lines"
    assert loop_reason("아아아", ReplyLimits()) is None and loop_reason("아아아아", ReplyLimits()) == "run"


def test_new_loop_matches_the_whole_text_check():
    """The logits processor's token-by-token test flags exactly the texts the final check rejects."""
    for text in ("ㅋㅋㅋ ㅋㅋㅋ ㅋㅋㅋ", "ㅋㅋㅋㅋㅋ", "응 응 응", "좋아 좋아", "나 오늘 밥 먹었어 그리고 나 오늘 밥 먹었어"):
        first = next((i for i in range(1, len(text) + 1) if new_loop(text[:i - 1], text[:i], MINSU)), None)
        assert (first is not None) == (loop_reason(text, MINSU) is not None), text


def test_echo():
    assert is_echo("민수야 뭐해?", ["민수야 뭐해"]) and is_echo("민수야 뭐해? ㅋㅋ", ["민수야 뭐해"])
    assert not is_echo("뭐해?", ["민수야 뭐해"]) and not is_echo("나 지금 밥 먹어", ["민수야 뭐해"])
    assert is_echo("응 나도", ["배고파", "응 나도!"])  # the persona's own previous reply
    assert echo_sources([(False, "배고파?"), (True, "응"), (False, "뭐 먹을래")]) == ("뭐 먹을래", "응")
    assert problem("  ", ["x"]) == "empty" and problem("ㅋㅋㅋㅋㅋㅋ", [], MINSU) == "loop:run"


def test_a_later_bubble_that_copies_one_before_it_or_the_message_is_an_echo():
    assert echoed_bubbles("응 지금 가\n응 지금 가", ["뭐해?"]) == [1]
    assert echoed_bubbles("응 지금 가\n5분만\n뭐해?", ["뭐해?"]) == [2]
    assert echoed_bubbles("응 지금 가\n5분만", ["뭐해?"]) == []
    assert problem("응 지금 가\n응 지금 가", ["뭐해?"], ReplyLimits()) == "echo"
    assert problem("응 지금 가\n5분만", ["뭐해?"], ReplyLimits()) is None


def test_a_bubble_of_one_stray_mark_is_empty():
    assert problem("운동하고 오면 된다\n.", [], MINSU) == "empty"
    assert problem("- \n응", [], MINSU) == "empty"
    for says_something in ("?", "...", "응\n?", "ㅋㅋ", "-_-"):
        assert problem(says_something, [], ReplyLimits()) is None, says_something


def test_register_polite_endings_and_casual_personas():
    for polite in ("맛있게 드세요!", "네 알겠어요 ㅎㅎ", "그렇죠?", "감사합니다.", "어디 가십니까", "응. 먹었어요\n너는?",
                   "조심히 가시오~", "예. 아 예 그럼 어때?", "아 네 ㅎㅎ", "넵!", "아뇨"):
        assert is_polite(polite), polite
    for casual in ("맛있게 먹어!", "배고프니까 빨리 와", "응 알겠어 ㅋㅋ", "뭐해?", "요즘 바빠", "ㅋㅋㅋ", "", "ok",
                   "오 좋네", "그거 맞네!", "네 차례야", "응 ㅇㅇ"):
        assert not is_polite(casual), casual
    assert MINSU.polite_share == 0.0 and MINSU.casual  # none of 민수's turns is polite
    assert problem("맛있게 드세요!", [], MINSU) == "register" and problem("맛있게 먹어!", [], MINSU) is None
    polite_persona = ReplyLimits.from_card(measure_limits(["네 좋아요", "감사합니다", "응 그래"]))
    assert polite_persona.polite_share == 0.667 and problem("맛있게 드세요!", [], polite_persona) is None
    assert problem("맛있게 드세요!", [], ReplyLimits()) is None  # an old card: register unknown, not checked
    c = lambda text, score, why: Candidate(text, 3, (1, 2, 3), -1.0, -2.0, score, why)  # noqa: E731
    assert _choose([c("맛있게 드세요!", 5.0, "register"), c("맛있게 먹어", -2.0, None)]).text == "맛있게 먹어"


def test_swearing_by_family_and_the_innocent_words_that_contain_it():
    swearing = {"나 애미뒤진데 ㅋㅋ": "니애미", "하 진짜 애미 뒤뚱": "니애미", "널 쳐 죽이든데": "쳐죽여",
                "ㅅㅂ 망했다": "씨발", "시발 뭐야": "씨발", "개새끼야": "개새끼", "좆같네": "좆", "미친놈 ㅋㅋ": "미친놈",
                "존나 웃겨": "존나", "졸라 피곤": "존나", "지랄하네": "지랄", "병신 같은": "병신", "뒤질래?": "쳐죽여",
                "애미없네 진짜": "니애미", "에미 없는 놈": "니애미", "애미리스 ㅋㅋ": "니애미", "니미럴": "니애미"}
    for text, family in swearing.items():
        assert swear_families(text) == {family}, text
    for innocent in ("시발점에서 출발", "시발역", "꿈을 좇아", "가방을 뒤져 봐", "시바견 귀여워", "새끼 고양이",
                     "병신년 새해", "미친 듯이 웃었어", "엄마를 졸라서 샀어", "이 노래 죽여준다", "ㅋㅋ 그니까",
                     "애미야 국이 짜다", ""):
        assert swear_families(innocent) == set(), innocent
    # while a reply is written, a word the next character may make innocent waits for it
    assert swear_families("엄마를 졸라", pending=True) == set() and swear_families("엄마를 졸라") == {"존나"}
    assert swear_families("엄마를 졸라서", pending=True) == set()
    assert swear_families("엄마를 졸라 ", pending=True) == {"존나"} and swear_families("ㅅㅂ", pending=True) == {"씨발"}


def test_swearing_the_persona_never_does_is_rejected():
    assert MINSU.profanity == frozenset()  # 민수's turns never swear
    assert problem("나 애미뒤진데 ㅋㅋ", [], MINSU) == "profanity" and foreign_swearing("ㅅㅂ", MINSU)
    assert problem("시발점에서 보자", [], MINSU) is None
    swearer = ReplyLimits.from_card(measure_limits(["존나 웃기네 ㅋㅋ", "응 가자"]))
    assert swearer.profanity == {"존나"}
    assert problem("존나 배고파", [], swearer) is None  # their own word
    assert problem("ㅅㅂ 배고파", [], swearer) == "profanity"  # not theirs
    assert problem("ㅅㅂ 배고파", [], ReplyLimits.from_card({})) == "profanity"  # an old card: no swearing
    assert problem("ㅅㅂ 배고파", [], ReplyLimits.from_card({"profanity": ["씨발"]})) is None
    assert build_card("민수", ["존나 웃겨", "ㅇㅇ"]).profanity == ["존나"]
    c = lambda text, score, why: Candidate(text, 3, (1, 2, 3), -1.0, -2.0, score, why)  # noqa: E731
    assert _choose([c("애미뒤진", 5.0, "profanity"), c("맛있게 드세요!", -2.0, "register")]).text == "맛있게 드세요!"
    stats = reply_stats(["ㅅㅂ 뭐야", "응 가자"], [(), ()], MINSU, ["응"])
    assert stats["profanity"] == 0.5


def test_rejected_candidates_rank_last():
    c = lambda text, score, why: Candidate(text, 3, (1, 2, 3), -1.0, -2.0, score, why)  # noqa: E731
    cands = [c("", 9.0, "empty"), c("민수야 뭐해", 5.0, "echo"), c("ㅋㅋㅋㅋㅋ", 4.0, "loop:run"),
             c("밥 먹는 중", -3.0, None), c("응", -1.0, None)]
    assert _choose(cands).text == "응"
    assert _choose(cands[:3]).text == "민수야 뭐해"  # all rejected: the least bad


def test_card_carries_limits_and_old_cards_get_defaults(tmp_path):
    card = build_card("민수", ["ㅋㅋㅋ 응", "밥 먹자\n지금", "ㅎㅎ 좋아"])
    assert card.max_runs["ㅋ"] == 3 and card.max_lines == 2 and card.burst_share == 0.333
    write_card(tmp_path / "persona.yaml", card)
    got = read_limits(tmp_path / "persona.yaml")
    assert got.max_runs["ㅋ"] == 3 and got.max_lines == 2 and got.median_chars == card.median_reply_chars
    (tmp_path / "old.yaml").write_text("name: 민수\nmedian_reply_chars: 10\n", encoding="utf-8")
    assert read_limits(tmp_path / "old.yaml").max_runs == DEFAULT_RUNS
    assert read_limits(tmp_path / "missing.yaml") == ReplyLimits()


def test_reply_stats():
    replies = ["", "민수야 뭐해", "ㅋㅋㅋㅋㅋㅋ", "밥 먹어\n너는?"]
    sources = [("민수야 뭐해",)] * 4
    s = reply_stats(replies, sources, MINSU, real=["응", "밥 먹는 중"])
    assert (s["n"], s["empty"], s["echo"], s["loop"]) == (4, 0.25, 0.25, 0.25)
    assert s["loop_reasons"] == {"run": 1} and s["multi_line"] == 0.25
    assert s["polite"] == 0.0 and s["real_polite"] == 0.0
    assert reply_stats(["네 좋아요", "응"], [()] * 2, MINSU, real=["감사합니다"])["real_polite"] == 1.0
    assert s["mean_chars"] == round((6 + 6 + 8) / 3, 1) and s["real_mean_chars"] == 3.5
    assert s["length_ratio"] == round(6.7 / 3.5, 3)
    assert bubbles(" 응 \n\n 지금 가 ") == ["응", "지금 가"]
