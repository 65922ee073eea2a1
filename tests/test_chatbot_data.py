"""The fixed ChatbotData held-out split: disjoint answers, stable assignment (needs ../shared/data)."""
from __future__ import annotations

import pytest

from core.errors import UserError
from data_prep.chatbot_data import DEFAULT_CSV, is_heldout, load_qa

pytestmark = pytest.mark.skipif(not DEFAULT_CSV.exists(), reason=f"shared data missing: {DEFAULT_CSV}")


def test_split_is_disjoint_by_answer_and_about_ten_percent():
    train, heldout = load_qa(split="train"), load_qa(split="heldout")
    assert len(train) + len(heldout) == len(load_qa())
    assert not {x.answer for x in train} & {x.answer for x in heldout}
    assert 0.07 < len(heldout) / (len(train) + len(heldout)) < 0.13


def test_assignment_is_a_pure_function_of_the_answer():
    assert is_heldout("여행은 언제나 좋죠.") == is_heldout("  여행은 언제나 좋죠. ")
    assert [is_heldout(str(i)) for i in range(40)].count(True) > 0


def test_not_chatbotdata_is_one_user_error(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match="needs the columns Q and A"):
        load_qa(bad)
