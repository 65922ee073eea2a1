"""Next-reply selection and speaker attribution: the metrics as defined, and on tiny trained models.

A tiny Gemma (extended with the chat tokens) is fine-tuned in-process two ways on the
same replies: one answers each message by copying it (the reply depends on the
context), one sees a shuffled, unrelated message before each reply (the same replies,
no dependence). Selection must tell them apart. The metric definitions (PMI, ties,
ranks, attribution, confusion) are checked on hand-made scores with a known answer.
"""
from __future__ import annotations

import random

import pytest

from data_prep.chatbot_data import QA
from data_prep.records import ContextTurn
from core.chat_format import render, render_backward
from pipeline.evaluation import attribution, selection
from pipeline.evaluation.scoring import Example, ReplyScore, message_of, score_group
from tests.test_evaluate import one_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

PERSONA, USER = "봇", "친구"
MESSAGES = ("오늘 날씨 좋다", "배고파 밥 먹자", "영화 보러 갈래", "숙제 다 했어?", "내일 시험이야",
            "고양이 귀여워", "커피 마실래", "주말에 뭐 해", "버스 놓쳤어", "노래 추천해 줘",
            "비 온다 우산 챙겨", "게임 한 판 할래", "피곤해서 잘래", "생일 축하해", "운동 가자")


@pytest.fixture(scope="module")
def extended_dir(tiny_gemma_dir, tmp_path_factory):
    from pipeline.extension import ensure_extended

    return ensure_extended(str(tiny_gemma_dir), cache_dir=tmp_path_factory.mktemp("sel-cache"))


def fine_tune(extended_dir, pairs: list[tuple[str, str]], steps: int = 60):
    """The extended tiny model trained on (message, reply) pairs as one padded batch, in eval mode."""
    import torch

    from core.chat_format import IGNORE_INDEX, pad_id
    from core.models import load_extended

    torch.manual_seed(0)
    model, tok, _ = load_extended(extended_dir)
    rows = [render(tok, "", (ContextTurn(USER, m),), PERSONA, r, 64) for m, r in pairs]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.tensor([r.input_ids + [pad_id(tok)] * (width - len(r.input_ids)) for r in rows])
    labels = torch.tensor([r.labels + [IGNORE_INDEX] * (width - len(r.labels)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


OTHER_MESSAGES = ("점심 뭐 먹었어", "지금 어디야", "전화해 줘", "택시 탈까", "책 읽는 중")


def items() -> list[selection.SelectionItem]:
    """Each message answered by itself among the other messages (15 candidates, chance 1/15); five other
    messages give marginal PMI's p(reply)."""
    its = selection.qa_items([QA(m, m, 0) for m in MESSAGES], len(MESSAGES), 0, PERSONA, USER)
    return selection.with_marginal(its, [(ContextTurn(USER, m),) for m in OTHER_MESSAGES], (), 5, 0)


def hits(model, tok) -> dict[str, float]:
    s = selection.summarize(selection.score_items(model, tok, items(), "", 64))
    assert s["n"] == len(MESSAGES) and s["chance"] == pytest.approx(1 / len(MESSAGES))
    return {k: s[k]["hits1"] for k in selection.SCORES}


def test_a_model_that_copies_the_context_beats_one_that_ignores_it(extended_dir):
    copier = hits(*fine_tune(extended_dir, [(m, m) for m in MESSAGES]))
    shuffled = random.Random(0).sample(MESSAGES, len(MESSAGES))
    ignorer = hits(*fine_tune(extended_dir, [(s, m) for s, m in zip(shuffled, MESSAGES)]))
    for score in selection.SCORES:
        if score in ("pmi_marginal", "pmi_bidi"):
            continue  # its messages are none these models saw: the next test; no backward model: below
        assert copier[score] >= 0.8, (score, copier)
        assert copier[score] - ignorer[score] >= 0.5, (score, copier, ignorer)


def test_marginal_pmi_tells_a_copier_from_an_ignorer_where_the_no_context_prompt_drifts(extended_dir):
    every = MESSAGES + OTHER_MESSAGES  # the marginal's messages are of the models' world: they train on them too
    shuffled = random.Random(0).sample(every, len(every))
    ignorer = hits(*fine_tune(extended_dir, [(s, m) for s, m in zip(shuffled, every)]))
    copier = hits(*fine_tune(extended_dir, [(m, m) for m in every], steps=150))
    assert copier["pmi_marginal"] == 1.0 and ignorer["pmi_marginal"] <= 0.1, (copier, ignorer)
    # trained longer, the copier's reply after the bare instruction (no turn: a prompt it never saw) stops
    # standing for its p(reply), and PMI against it loses items that the marginal keeps
    assert copier["pmi"] < 0.8, copier


def test_a_backward_model_that_copies_picks_the_reply_the_message_repeats(extended_dir):
    """A copier read backward (the candidate as the user's turn, the message as the reply) finds the message
    likeliest after the candidate that is the message; an ignorer does not. Both ranks go into ``pmi_bidi``."""
    copier, tok = fine_tune(extended_dir, [(m, m) for m in MESSAGES])
    shuffled = random.Random(0).sample(MESSAGES, len(MESSAGES))
    ignorer, _ = fine_tune(extended_dir, [(s, m) for s, m in zip(shuffled, MESSAGES)])
    its = items()
    plain = selection.score_items(ignorer, tok, its, "", 64)  # the forward side: an ignorer's, near chance
    got = {}
    for name, backward in (("copier", copier), ("ignorer", ignorer)):
        back = selection.backward_scores(backward, tok, its)
        assert [len(b) for b in back] == [len(it.candidates) for it in its]
        first = back[0][0]  # log p(message | the true reply), as render_backward lays it out
        r = render_backward(tok, USER, its[0].candidates[0], its[0].example.context[-1].text)
        assert first.logprob == pytest.approx(score_group(backward, tok, [r])[0].logprob, rel=1e-4, abs=1e-3)
        got[name] = selection.summarize(selection.with_backward(plain, back))
    assert got["copier"]["pmi_bidi"]["hits1"] >= 0.6 and got["ignorer"]["pmi_bidi"]["hits1"] <= 0.2, got
    assert got["copier"]["pmi"] == got["ignorer"]["pmi"]  # the forward scores are left as they were


def test_pmi_bidi_adds_the_backward_log_prob_and_the_chats_score_its_per_token_mean():
    ctx = (ReplyScore(-8.0, 4), ReplyScore(-2.0, 2))
    bare = (ReplyScore(-9.0, 4), ReplyScore(-2.2, 2))
    back = (ReplyScore(-3.0, 3), ReplyScore(-9.0, 3))
    plain = selection.Selected(ctx, bare)
    both = selection.with_backward([plain], [back])[0]
    assert both.values("pmi_bidi") == pytest.approx([1.0 - 3.0, 0.2 - 9.0])
    assert not plain.has("pmi_bidi") and both.has("pmi_bidi") and both.has("pmi")
    with pytest.raises(ValueError):
        plain.values("pmi_bidi")
    w = selection.BACKWARD_WEIGHT
    assert both.values("mmi") == pytest.approx([m + w * b.logprob / b.tokens
                                                for m, b in zip(plain.values("mmi"), back)])
    assert selection.summarize([plain])["pmi_bidi"] == {"hits1": None, "hits1_ci95": None, "mean_rank": None}
    # another weight of the backward term (what bench/rerank_weight_bench.py varies); 0 leaves the forward score
    assert both.values("pmi_bidi", 2.0) == pytest.approx([1.0 - 6.0, 0.2 - 18.0])
    assert both.values("mmi", 0.0) == pytest.approx(plain.values("mmi"))
    turned = selection.with_backward([selection.Selected(ctx[::-1], bare[::-1])], [back])[0]  # PMI prefers the other
    assert turned.hit("pmi_bidi", 0.0) == 0.0 and turned.hit("pmi_bidi") == 1.0  # the term turns the choice


def test_the_message_is_the_last_turn_not_the_personas():
    ex = lambda *turns: Example("", tuple(ContextTurn(s, t) for s, t in turns), PERSONA, "응")  # noqa: E731
    assert message_of(ex((USER, "밥 먹었어?"), (PERSONA, "아니"), (USER, "같이 먹자"))).text == "같이 먹자"
    assert message_of(ex((USER, "밥 먹었어?"), (PERSONA, "아니"))).text == "밥 먹었어?"  # a burst
    assert message_of(ex((PERSONA, "나 왔어"))) is None


def test_no_context_scores_are_the_reply_after_the_bare_instruction(extended_dir):
    from core.models import load_extended

    model, tok, _ = load_extended(extended_dir)
    item = items()[0]
    got = selection.score_items(model.eval(), tok, [item], "너는 봇이야.", 64)[0]
    for cand, ctx, bare in zip(item.candidates, got.with_context, got.without_context):
        alone = score_group(model, tok, [render(tok, "너는 봇이야.", (), PERSONA, cand)])[0]
        full = score_group(model, tok, [render(tok, "너는 봇이야.", item.example.context, PERSONA, cand)])[0]
        assert bare.logprob == pytest.approx(alone.logprob, rel=1e-4, abs=1e-3) and bare.tokens == alone.tokens
        assert ctx.logprob == pytest.approx(full.logprob, rel=1e-4, abs=1e-3) and ctx.tokens == full.tokens


def test_marginal_scores_are_the_log_mean_of_the_reply_after_each_other_message(extended_dir):
    import math

    from core.models import load_extended

    model, tok, _ = load_extended(extended_dir)
    item = items()[0]
    assert len(item.marginal) == 5
    cache: dict = {}
    got = selection.score_items(model.eval(), tok, [item], "너는 봇이야.", 64, marginal=cache)[0]
    for cand, marg in zip(item.candidates, got.marginal):
        each = [score_group(model, tok, [render(tok, "너는 봇이야.", c, PERSONA, cand)])[0].logprob
                for c in item.marginal]
        assert marg == pytest.approx(math.log(sum(math.exp(x) for x in each) / len(each)), rel=1e-4, abs=1e-3)
    assert len(cache) == len(set(item.candidates))  # one entry per text: the next item reuses them
    again = selection.score_items(model, tok, [item], "너는 봇이야.", 64, marginal=cache)[0]
    assert again.marginal == got.marginal


def test_marginal_pmi_subtracts_the_mean_over_other_messages_and_is_left_out_without_them():
    ctx = (ReplyScore(-8.0, 4), ReplyScore(-2.0, 2))
    bare = (ReplyScore(-9.0, 4), ReplyScore(-2.2, 2))
    with_marginal = selection.Selected(ctx, bare, (-15.0, -2.5))
    assert with_marginal.values("pmi_marginal") == pytest.approx([7.0, 0.5])
    without = selection.Selected(ctx, bare)
    assert not without.has("pmi_marginal") and without.has("pmi")
    with pytest.raises(ValueError):
        without.values("pmi_marginal")
    summary = selection.summarize([with_marginal, without])
    assert summary["n"] == 2 and summary["pmi_marginal"]["hits1"] == 1.0  # over the one item that has it
    assert selection.summarize([without])["pmi_marginal"] == {"hits1": None, "hits1_ci95": None, "mean_rank": None}


def test_marginal_contexts_are_no_items_and_answered_by_no_candidate_and_leave_the_items_as_they_were():
    rows = [QA(f"질문 {i}", f"답 {i}", 0) for i in range(80)]
    plain = selection.qa_items(rows, 25, 7, PERSONA, USER, marginal=0)
    got = selection.qa_items(rows, 25, 7, PERSONA, USER, marginal=10)
    assert [(i.example, i.distractors) for i in got] == [(i.example, i.distractors) for i in plain]
    assert all(i.marginal == () for i in plain)
    marginal = got[0].marginal
    assert len(marginal) == 10 == len(set(marginal)) and all(i.marginal == marginal for i in got)
    pool = {c for i in got for c in i.candidates}
    asked = {i.example.context for i in got}
    for context in marginal:
        assert context not in asked and context[0].text.replace("질문", "답") not in pool
    assert selection.qa_items(rows, 25, 7, PERSONA, USER, marginal=10) == got  # seeded


def test_persona_marginal_contexts_prefer_held_out_pairs_then_train_ones(tmp_path):
    import json

    def pair(conv: str, ctx: str, reply: str) -> str:
        return json.dumps({"persona": PERSONA, "instruction": "i", "context": [{"speaker": USER, "text": ctx}],
                           "response": reply, "conversation_id": conv, "source": "t"}, ensure_ascii=False) + "\n"

    val = [pair(f"v{c}", f"검증 질문 {c}", f"검증 {c}") for c in range(30)]
    train = [pair(f"t{c}", f"학습 질문 {c}", f"학습 {c}") for c in range(30)]
    (tmp_path / "validation.jsonl").write_text("".join(val), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("".join(train), encoding="utf-8")
    got = selection.persona_items(tmp_path, PERSONA, "i", 4, 0, marginal=12)
    pool = {c for i in got for c in i.candidates}  # 4 items with 19 held-out distractors: every held-out reply
    texts = [m[0].text for m in got[0].marginal]
    assert len(texts) == 12 and all(t.startswith("학습") for t in texts)  # no held-out pair is left unused
    assert all(t.replace(" 질문", "") not in pool for t in texts)
    few = selection.persona_items(tmp_path, PERSONA, "i", 1, 0, marginal=12)
    texts = [m[0].text for m in few[0].marginal]  # 1 item, 19 distractors: 10 held-out pairs left, then train
    assert [t.split()[0] for t in texts] == ["검증"] * 10 + ["학습"] * 2
    assert few[0].example.context not in few[0].marginal


def test_pmi_prefers_the_reply_the_context_explains_mean_logprob_the_generic_one():
    # candidates: the true reply (4 tokens), a generic "ㅋㅋ" likely anywhere (2 tokens), an unrelated reply
    ctx = (ReplyScore(-8.0, 4), ReplyScore(-2.0, 2), ReplyScore(-12.0, 4))
    bare = (ReplyScore(-16.0, 4), ReplyScore(-2.2, 2), ReplyScore(-12.4, 4))
    s = selection.Selected(ctx, bare)
    assert s.values("mean") == [-2.0, -1.0, -3.0]
    assert s.values("pmi") == pytest.approx([8.0, 0.2, 0.4])
    assert s.values("pmi_mean") == pytest.approx([2.0, 0.1, 0.1])
    assert s.values("mmi") == pytest.approx([0.0, -0.45, -1.45])  # (ctx - 0.5 bare) / tokens: the chat's score
    assert (s.hit("mean"), s.rank("mean")) == (0.0, 2.0)
    assert (s.hit("pmi"), s.rank("pmi")) == (1.0, 1.0)


def test_a_tie_at_the_top_counts_as_a_fair_draw():
    same = tuple(ReplyScore(-4.0, 2) for _ in range(4))
    s = selection.Selected(same, same)
    assert s.hit("mean") == 0.25 and s.rank("mean") == 2.5
    summary = selection.summarize([s, None])
    assert summary["n"] == 1 and summary["skipped"] == 1 and summary["chance"] == 0.25


def _chosen(right: bool) -> selection.Selected:
    """An item whose true reply is ranked first (``right``) or last by every score."""
    ctx = (ReplyScore(-2.0 if right else -9.0, 2), ReplyScore(-5.0, 2))
    return selection.Selected(ctx, (ReplyScore(-6.0, 2), ReplyScore(-6.0, 2)))


def test_hits_intervals_hold_the_figure_narrow_with_more_items_and_are_seeded():
    assert selection.interval([]) is None
    assert selection.interval([1.0] * 20) == (1.0, 1.0)  # every resample the same: no spread
    few = [1.0] * 5 + [0.0] * 5
    many = [1.0] * 150 + [0.0] * 150
    lo, hi = selection.interval(few)
    lo2, hi2 = selection.interval(many)
    assert lo < 0.5 < hi and lo2 < 0.5 < hi2 and hi2 - lo2 < (hi - lo) / 3  # ~1/sqrt(30) as wide
    assert 0.045 < (hi2 - lo2) / 2 < 0.07  # the binomial half-width at 0.5 and 300 items: 1.96 * 0.029 = 0.057
    assert selection.interval(many) == (lo2, hi2)  # the same draws every call
    summary = selection.summarize([_chosen(True)] * 3 + [_chosen(False)] * 3)
    assert summary["pmi"]["hits1"] == 0.5 and summary["pmi"]["hits1_ci95"] == selection.interval([1.0] * 3 + [0.0] * 3)


def test_paired_difference_counts_the_items_each_system_alone_gets_right():
    adapter = [_chosen(True), _chosen(True), _chosen(False), None, _chosen(True)]
    base = [_chosen(True), _chosen(False), _chosen(True), _chosen(False), _chosen(False)]
    d = selection.paired(adapter, base, "pmi")
    assert d["n"] == 4  # the item the adapter could not score is left out of both
    assert (d["a_only"], d["b_only"]) == (2, 1) and d["diff"] == pytest.approx(0.25)
    assert d["ci95"][0] <= 0.25 <= d["ci95"][1]
    same = selection.paired(base, base, "pmi")
    assert same["diff"] == 0 and same["ci95"] == (0.0, 0.0)  # pairing: a system against itself has no spread
    assert selection.paired(adapter, base, "pmi_bidi") is None  # no backward scores


def test_distractors_are_distinct_other_texts_and_seeded():
    rows = [QA(f"질문 {i}", f"답 {i % 30}", 0) for i in range(90)]  # 30 distinct answers, each asked 3 times
    a = selection.qa_items(rows, 25, 7, PERSONA, USER)
    b = selection.qa_items(rows, 25, 7, PERSONA, USER)
    assert a == b and len(a) == 25
    assert len({i.example.response for i in a}) == 25  # one item per distinct answer
    for item in a:
        assert len(item.candidates) == selection.CANDIDATES == len(set(item.candidates))
        assert item.example.context == (ContextTurn(USER, item.example.context[0].text),)


def test_a_switch_item_asks_the_last_question_and_first_offers_an_answer_to_the_one_before():
    topics = ("점심 메뉴 추천", "주말 영화 추천", "시험 공부 방법", "강아지 산책 시간", "비 오는 날 노래",
              "커피 원두 고르기", "운동 루틴 짜기", "여행 짐 싸기", "아침 일찍 일어나기", "방 청소 순서")
    rows = [QA(f"{t} 해줘", f"{t} 답", 0) for t in topics]  # each question has a near twin asked another way
    rows += [QA(f"{t} 좀 알려줘", f"{t} 다른 답", 0) for t in topics]
    rows += [QA(f"아무 말 {i}", f"아무 답 {i}", 0) for i in range(20)]
    got = selection.switch_items(rows, 8, 3, PERSONA, USER)
    assert got == selection.switch_items(rows, 8, 3, PERSONA, USER) and len(got) == 8  # seeded
    for item in got:
        first, answer, last = item.example.context
        assert (first.speaker, answer.speaker, last.speaker) == (USER, PERSONA, USER) and item.previous
        assert len(item.candidates) == selection.CANDIDATES == len(set(item.candidates))
        assert answer.text not in item.candidates  # the persona's own turn again would be an echo
        truth = next(r for r in rows if r.question == last.text)
        assert item.example.response == truth.answer
        topic = next((t for t in topics if first.text.startswith(t)), None)
        if topic is not None:  # the question most like the first one is its twin: its answer comes first
            assert item.distractors[0].startswith(topic)


def test_previous_first_counts_where_the_answer_to_the_message_before_ranks_first():
    def item(truth: float, previous: float, other: float = -9.0) -> selection.Selected:
        ctx = (ReplyScore(truth, 2), ReplyScore(previous, 2), ReplyScore(other, 2))
        return selection.Selected(ctx, tuple(ReplyScore(-6.0, 2) for _ in ctx), previous=True)

    lagging, answering, tied = item(-5.0, -2.0), item(-2.0, -5.0), item(-3.0, -3.0)
    assert (lagging.previous_first("pmi"), answering.previous_first("pmi"), tied.previous_first("pmi")) == (1, 0, 0.5)
    s = selection.summarize([lagging, answering, tied, None])
    assert s["pmi"]["previous_first"] == pytest.approx(0.5) and s["pmi"]["hits1"] == pytest.approx(0.5)
    assert "previous_first" not in selection.summarize([_chosen(True)])["pmi"]  # not a switch item


def test_persona_distractors_come_from_other_conversations_held_out_first(tmp_path):
    import json

    def pair(conv: str, reply: str) -> str:
        return json.dumps({"persona": PERSONA, "instruction": "i", "context": [{"speaker": USER, "text": "뭐해"}],
                           "response": reply, "conversation_id": conv, "source": "t"}, ensure_ascii=False) + "\n"

    val = [pair(f"v{c}", f"검증 {c}-{k}") for c in range(3) for k in range(4)]
    train = [pair(f"t{c}", f"학습 {c}-{k}") for c in range(5) for k in range(4)]
    (tmp_path / "validation.jsonl").write_text("".join(val), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("".join(train), encoding="utf-8")
    got = selection.persona_items(tmp_path, PERSONA, "i", 5, 0)
    assert len(got) == 5
    for item in got:
        conv = item.example.response.split()[1].split("-")[0]
        held = [d for d in item.distractors if d.startswith("검증")]
        assert len(held) == 8 and all(d.split()[1].split("-")[0] != conv for d in held)  # 2 other conversations
        assert len(item.distractors) == 19 and item.distractors[:8] == tuple(held)


def test_attribution_gives_each_reply_to_the_best_adapter_and_counts_a_confusion():
    def sc(*lps: float) -> list[ReplyScore]:
        return [ReplyScore(x, 2) for x in lps]

    truths = ["A", "A", "B", "C"]
    scores = {"A": sc(-1, -5, -9, -4), "B": sc(-3, -2, -1, -5), "C": sc(-2, -4, -6, -3)}
    ranked = attribution.attribute(truths, scores)
    assert [r.predicted for r in ranked] == ["A", "B", "B", "C"]
    block = attribution.results(truths, scores, {"A": sc(0, 0, 0, 0), "B": sc(-3, -2, -1, -5), "C": sc(0, 0, 0, 0)})
    assert block["personas"] == ["A", "B", "C"] and block["n"] == {"A": 2, "B": 1, "C": 1}
    assert block["logprob"]["accuracy"] == 0.75 and block["logprob"]["chance"] == pytest.approx(1 / 3)
    assert block["logprob"]["matrix"] == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # gain over the base in each adapter's prompt: A's and C's adapters score below a base of 0, B's adds
    # nothing (gain 0), so B wins every reply
    assert block["gain"]["matrix"] == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    assert block["gain"]["accuracy"] == 0.25


def test_attribution_leaves_out_a_reply_that_an_adapter_could_not_score():
    scores = {"A": [ReplyScore(-1, 1), None], "B": [ReplyScore(-2, 1), ReplyScore(-1, 1)]}
    ranked = attribution.attribute(["A", "B"], scores)
    assert len(ranked) == 1 and ranked[0].predicted == "A"


def test_memory_is_shown_with_the_context_and_the_no_context_prompt_stays_bare(extended_dir):
    from core.memory import Recalled
    from core.models import load_extended

    model, tok, _ = load_extended(extended_dir)
    item = items()[0]
    shown = [Recalled("비 온다", "우산 챙겨", 0.8)]
    got = selection.score_items(model.eval(), tok, [item], "너는 봇이야.", 64, memories=[shown])[0]
    plain = selection.score_items(model.eval(), tok, [item], "너는 봇이야.", 64)[0]
    for cand, ctx, bare, old in zip(item.candidates, got.with_context, got.without_context, plain.without_context):
        full = score_group(model, tok, [render(tok, "너는 봇이야.", item.example.context, PERSONA, cand,
                                               memory=shown)])[0]
        assert ctx.logprob == pytest.approx(full.logprob, rel=1e-4, abs=1e-3) and ctx.tokens == full.tokens
        assert bare == old  # PMI's baseline is the bare instruction with or without memory
    assert got.with_context != plain.with_context
    # an item that recalls nothing has the plain prompt: its plain scores are reused, not recomputed
    reused = selection.score_items(None, tok, [item], "너는 봇이야.", 64, memories=[[]], without_memory=[plain])
    assert reused == [plain]


def test_memory_overlap_counts_recalled_items_and_candidates_shown():
    from core.memory import Recalled

    its = items()[:3]
    memories = [[Recalled("x", its[0].candidates[0], 1.0)],  # the true reply itself
                [Recalled("y", its[1].distractors[0], 0.5), Recalled("z", "딴 얘기", 0.4)],
                []]
    assert selection.memory_overlap(its, memories) == {"items": 3, "with_memory": 2, "shown": 3,
                                                       "truth_shown": 1, "distractor_shown": 1}
