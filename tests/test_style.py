"""Style statistics: pure functions on Korean chat replies."""
from __future__ import annotations

import pytest

from pipeline.evaluation.style import (
    EMOTICON, distinct_n, ending_distribution, mean_distance, style_distances, style_stats,
)


def test_marks_emoji_and_emoticons_are_shares_of_replies():
    replies = ["ㅋㅋㅋ 진짜?", "아 그래 ㅎㅎ", "힘들어 ㅠㅠ", "고양이😺 귀여워", "몇 살이야? (´･ω･`)", "그래 ^^"]
    s = style_stats(replies)
    assert s["laugh_k"] == pytest.approx(1 / 6)
    assert s["laugh_h"] == pytest.approx(1 / 6)
    assert s["cry"] == pytest.approx(1 / 6)
    assert s["emoji"] == pytest.approx(1 / 6)
    assert s["emoticon"] == pytest.approx(2 / 6)  # the kaomoji and ^^; ㅠㅠ is crying, not an emoticon
    assert s["question"] == pytest.approx(2 / 6)
    assert s["length"] == pytest.approx(sum(map(len, replies)) / 6)


@pytest.mark.parametrize("text", ["^^", "^_^", ">_<", "T_T", "-_-", ":)", ";;", "(´･ω･`)", "＼(〇_ｏ)／", "o_o"])
def test_emoticons_are_detected(text):
    assert EMOTICON.search(f"그래 {text}")


@pytest.mark.parametrize("text", ["그래 ㅠㅠ", "(웃음)", "사과 (3개)", "좋아!"])
def test_plain_text_is_not_an_emoticon(text):
    assert not EMOTICON.search(text)


def test_sentence_endings_are_classified_after_stripping_laughter_and_punctuation():
    d = ending_distribution(["좋아요. 그렇소!", "뭐하냐?", "그렇지 ㅋㅋ", "학교에 간다..."])
    assert d["-요"] == pytest.approx(0.2)
    assert d["-오/소"] == pytest.approx(0.2)
    assert d["-냐/니"] == pytest.approx(0.2)
    assert d["-지"] == pytest.approx(0.2)
    assert d["-다"] == pytest.approx(0.2)
    assert sum(d.values()) == pytest.approx(1.0)


def test_distinct_n_counts_unique_word_ngrams():
    assert distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 2) == 0.0


def test_distances_are_zero_for_the_same_replies_and_large_for_different_styles():
    king = ["반갑소. 짐은 고양이를 키우오.", "그렇소. 짐이 가겠소."]
    cute = ["안녕!! >< 고양이😺 키우고있어!! 0_0", "ㅋㅋㅋ 진짜?? (´･ω･`)"]
    same = style_distances(style_stats(king), style_stats(list(king)))
    assert set(same.values()) == {0.0}
    far = style_distances(style_stats(king), style_stats(cute))
    assert far["endings"] == pytest.approx(1.0)  # -오/소 vs none of it: disjoint distributions
    assert far["emoji"] == pytest.approx(0.5) and far["emoticon"] == pytest.approx(1.0)
    assert mean_distance(far) > mean_distance(same)


def test_empty_reply_sets_give_zeros_not_errors():
    s = style_stats([])
    assert s["length"] == 0.0 and s["emoji"] == 0.0 and sum(s["endings"].values()) == 0.0
    assert style_distances(s, style_stats(["그래요."]))["length"] == pytest.approx(4.0)  # (4 - 0) / max(0, 1)
