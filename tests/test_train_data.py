"""Training data: supervised tokens are exactly the reply, context trims from the left, batches, rehearsal."""
from __future__ import annotations

import json

import pytest

from core import chat_format
from core.chat_format import IGNORE_INDEX
from core.errors import UserError
from data_prep.chatbot_data import is_heldout, load_qa
from data_prep.records import ContextTurn, Pair
from pipeline.training.data import (
    NEUTRAL_INSTRUCTION,
    collate,
    plan_batches,
    read_rehearsal,
    rehearsal_split,
    render_pairs,
    user_speaker,
    without_context,
)
from pipeline.training.config import TrainConfig
from tests.test_train_helpers import CHATBOT_CSV, PARTNER, extended, persona_data, persona_pairs, train_cache  # noqa: F401


@pytest.fixture(scope="module")
def tok(tiny_gemma_dir, train_cache):
    return extended(tiny_gemma_dir, train_cache)[1]


def test_supervised_tokens_decode_to_the_reply(tok):
    pair = persona_pairs(limit=5)[4]
    [ex], stats = render_pairs([pair], tok, 256)
    supervised = [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert supervised == [i for i in ex.labels if i != IGNORE_INDEX]  # labels are the ids themselves
    eot = tok.convert_tokens_to_ids(chat_format.EOT)
    assert supervised[-1] == eot and supervised.count(eot) == 1
    assert tok.decode(supervised[:-1]) == pair.response
    assert ex.input_ids[-len(supervised) - 1] == tok.convert_tokens_to_ids(chat_format.BOT)  # prompt unsupervised


def test_context_trimmed_from_left_reply_never_cut(tok):
    long_ctx = tuple(ContextTurn(PARTNER, f"{i}번째 메시지 좀 길게 써 볼게 ㅋㅋ") for i in range(30))
    fits = Pair("민수", "너는 민수야.", long_ctx, "응 알겠어", "c1")
    too_long = Pair("민수", "너는 민수야.", (), "아주 " * 200, "c2")
    examples, stats = render_pairs([fits, too_long], tok, 64)
    assert stats.kept == 1 and stats.dropped_too_long == 1
    [ex] = examples
    assert len(ex.input_ids) <= 64
    assert 0 < ex.context_turns < 30
    assert "29번째" in tok.decode(ex.input_ids) and "0번째" not in tok.decode(ex.input_ids)  # newest kept
    assert tok.decode([i for i in ex.labels if i != IGNORE_INDEX][:-1]) == "응 알겠어"


def test_collate_pads_with_non_eos_id(tok):
    examples, _ = render_pairs(persona_pairs(limit=4), tok, 128)
    pad = chat_format.pad_id(tok)
    batch = collate(examples, pad)
    assert pad not in (tok.eos_token_id, tok.convert_tokens_to_ids(chat_format.EOT))
    short = min(range(4), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert batch["input_ids"].shape[1] == max(len(e.input_ids) for e in examples) > n
    assert (batch["input_ids"][short, n:] == pad).all() and (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][short].sum() == n


def test_plan_batches_deterministic_complete_and_bucketed():
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    a, b = plan_batches(lengths, 8, seed=1, epoch=0), plan_batches(lengths, 8, seed=1, epoch=0)
    assert a == b and a != plan_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for batch in a for i in batch) == list(range(200))
    padded = sum(len(bt) * max(lengths[i] for i in bt) for bt in a)
    naive = sum(8 * max(lengths[i] for i in range(s, s + 8)) for s in range(0, 200, 8))
    assert padded < 0.8 * naive


def test_rehearsal_formats(tmp_path):
    qa = read_rehearsal(CHATBOT_CSV, speaker="지영")
    assert len(qa) > 10000
    assert qa[0].instruction == NEUTRAL_INSTRUCTION and qa[0].context[0].speaker == "지영" and qa[0].response
    jl = tmp_path / "r.jsonl"
    jl.write_text(json.dumps({"question": "뭐해?", "answer": "그냥 쉬어"}, ensure_ascii=False) + "\n", "utf-8")
    [p] = read_rehearsal(jl)
    assert (p.context[0].text, p.response) == ("뭐해?", "그냥 쉬어")
    txt = tmp_path / "r.txt"
    txt.write_text("오늘 날씨 좋다\n\n밥 먹자\n", "utf-8")
    assert [p.response for p in read_rehearsal(txt)] == ["오늘 날씨 좋다", "밥 먹자"]
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n", "utf-8")
    with pytest.raises(UserError, match="Q and A"):
        read_rehearsal(bad)


def test_rehearsal_leaves_out_the_heldout_qa_split(tmp_path):
    heldout = {q.answer for q in load_qa(CHATBOT_CSV, split="heldout")}
    trained = {p.response for p in read_rehearsal(CHATBOT_CSV)}
    assert heldout and trained and not heldout & trained
    jl = tmp_path / "r.jsonl"
    answers = sorted(heldout)[:2] + ["그냥 쉬어"]
    jl.write_text("".join(json.dumps({"q": "뭐해?", "a": a}, ensure_ascii=False) + "\n" for a in answers), "utf-8")
    assert not is_heldout("그냥 쉬어") and [p.response for p in read_rehearsal(jl)] == ["그냥 쉬어"]
    txt = tmp_path / "r.txt"  # plain lines too: the same answers with no question are still what is measured
    txt.write_text("\n".join(answers) + "\n", "utf-8")
    assert [p.response for p in read_rehearsal(txt)] == ["그냥 쉬어"]


def test_without_context_copies_a_stable_share_with_no_turns():
    pairs = persona_pairs(limit=60)
    bare = without_context(pairs, 0.25)
    assert 0.15 * len(pairs) < len(bare) < 0.35 * len(pairs)
    assert all(p.context == () for p in bare)
    assert {p.response for p in bare} <= {p.response for p in pairs if p.context}
    assert bare == without_context(pairs, 0.25) and without_context(pairs, 0) == []
    assert len(without_context(pairs, 1)) == sum(1 for p in pairs if p.context)
    assert {p.response for p in bare} <= {p.response for p in without_context(pairs, 0.5)}  # a larger share adds


def test_no_context_share_is_validated(persona_data):
    with pytest.raises(UserError, match="--no-context must be between 0 and 1"):
        TrainConfig(str(persona_data), "out", no_context=1.5).validate()


def test_rehearsal_split_ratio_and_disjoint():
    pairs = read_rehearsal(CHATBOT_CSV)[:1000]
    train, val = rehearsal_split(pairs, n_persona_train=80, ratio=0.2, seed=0)
    assert len(train) == 20  # 20 / (80 + 20) = 0.2 of the mix
    assert 0 < len(val) <= 64 and not {id(p) for p in train} & {id(p) for p in val}


def test_user_speaker_is_most_frequent_partner():
    assert user_speaker(persona_pairs(limit=10)) == PARTNER
