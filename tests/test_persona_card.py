"""Persona card: measured habits, Korean instruction, user edits kept on re-run."""
from data_prep.persona_card import build_card, card_path, is_user_edited, load_card, resolve_card, sentence_ending

TEXTS = ["ㅋㅋㅋ 뭐해?", "밥 먹었어", "응 알겠어 ㅋㅋ", "오늘 가냐 😀", "좋지^^"]


def test_card_measures_habits():
    card = build_card("민수", TEXTS)
    assert card.turns == 5 and card.median_reply_chars == 7
    assert card.marks["ㅋ"] == 0.4 and card.marks["ㅠ"] == 0.0
    assert card.top_emoji == ["😀"] and card.emoticon_share == 0.2
    assert set(card.endings) >= {"어", "냐", "지"}
    assert card.instruction.startswith("너는 민수야. 민수처럼 답해.")
    assert "ㅋ" in card.instruction
    assert build_card("영철", TEXTS).instruction.startswith("너는 영철이야.")


def test_sentence_ending_ignores_laughter_and_emoji():
    assert sentence_ending("알겠어요 ㅋㅋ!! 😀") == "요"
    assert sentence_ending("ㅋㅋ") is None


def test_generated_card_regenerated_edited_card_kept(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    card, kept = resolve_card(card_path(old, "민수"), card_path(old, "민수"), build_card("민수", TEXTS))
    assert not kept and not is_user_edited(card_path(old, "민수"))
    # unchanged file: regenerated from (new) data
    card2, kept = resolve_card(card_path(old, "민수"), card_path(new, "민수"), build_card("민수", TEXTS[:2]))
    assert not kept and card2.turns == 2
    # user edits the instruction: kept byte for byte and used
    path = card_path(old, "민수")
    path.write_text(path.read_text(encoding="utf-8").replace("너는 민수야.", "너는 부산 사람 민수야."), encoding="utf-8")
    card3, kept = resolve_card(path, card_path(new, "민수"), build_card("민수", TEXTS))
    assert kept and card3.instruction.startswith("너는 부산 사람 민수야.")
    assert card_path(new, "민수").read_bytes() == path.read_bytes()


def test_cleared_instruction_is_rerendered(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: 철수\nmedian_reply_chars: 10\ninstruction: ''\n", encoding="utf-8")
    assert load_card(path).instruction.startswith("너는 철수야.")


def test_card_of_many_turns_is_measured_on_an_even_sample():
    full = build_card("민수", TEXTS * 40, sample=0)
    sampled = build_card("민수", TEXTS * 40, sample=50)  # every 4th turn: the same mix of turns
    assert sampled.turns == full.turns == 200
    assert sampled.marks == full.marks and sampled.median_reply_chars == full.median_reply_chars
    assert set(sampled.endings) == set(full.endings)  # equal counts: ties may come in another order
