"""chatbot.decoding on tiny models: run caps in greedy mode, stop tokens, reranking, one shared function."""
from __future__ import annotations

from dataclasses import replace

import pytest

from chatbot import decoding
from chatbot.decoding import Prompt, SamplingParams
from core.reply_shape import ReplyLimits, longest_runs, loop_reason
from core import chat_format
from tests.chat_helpers import chat_dirs, engine, load_extended  # noqa: F401 (fixtures)

GREEDY = SamplingParams(temperature=0, max_new_tokens=24)
LIMITS = ReplyLimits(max_runs={"ㅋ": 3, "other": 2})


@pytest.fixture(scope="module")
def tiny(chat_dirs):
    model, tok, _ = load_extended(chat_dirs[0])
    return model.eval(), tok


def _prompt(tok, text: str, limits: ReplyLimits = LIMITS) -> Prompt:
    r = chat_format.render(tok, "민수처럼 답해.", [{"speaker": "철수", "text": text}], "민수")
    alone = chat_format.render(tok, "민수처럼 답해.", [], "민수")
    return Prompt(r.input_ids, alone.input_ids, (text,), limits)


def _biased(model, tok, bias: dict[str, float]):
    """Make the model's logits favour some tokens by a wide margin at every step (a looping model)."""
    import torch

    add = torch.zeros(len(tok))
    for piece, value in bias.items():
        add[tok.convert_tokens_to_ids(piece)] = value
    return model.lm_head.register_forward_hook(lambda mod, inp, out: out + add.to(out))


def test_greedy_run_capped_where_plain_greedy_loops(tiny):
    model, tok = tiny
    p = _prompt(tok, "뭐해?")
    hook = _biased(model, tok, {"ㅋ": 40.0, "▁응": 20.0, chat_format.EOT: 10.0})
    try:
        import torch

        plain = model.generate(input_ids=torch.tensor([p.ids]), max_new_tokens=12, do_sample=False,
                               pad_token_id=chat_format.pad_id(tok))
        looped = tok.decode(plain[0, len(p.ids):], skip_special_tokens=True)
        reply = decoding.generate(model, tok, [p], GREEDY)[0]
    finally:
        hook.remove()
    assert longest_runs(looped)["ㅋ"] == 12  # what the model does on its own
    assert longest_runs(reply.text)["ㅋ"] == 3 and loop_reason(reply.text, LIMITS) is None
    assert reply.text.startswith("ㅋㅋㅋ 응")


def test_stops_when_the_model_opens_another_turn(tiny):
    model, tok = tiny
    hook = _biased(model, tok, {"▁응": 40.0, chat_format.USER: 30.0})
    try:
        reply = decoding.generate(model, tok, [_prompt(tok, "뭐해?")], GREEDY)[0]
    finally:
        hook.remove()
    # "응 응" then a third "응" would loop (a block three times): <|user|> comes next and ends the reply
    assert reply.text == "응 응" and reply.candidates[0].tokens == 3


def test_no_empty_reply_even_when_the_model_wants_to_stop(tiny):
    model, tok = tiny
    hook = _biased(model, tok, {chat_format.EOT: 50.0})
    try:
        reply = decoding.generate(model, tok, [_prompt(tok, "뭐해?")], GREEDY)[0]
    finally:
        hook.remove()
    assert reply.text.strip() and reply.candidates[0].problem is None


def test_recorded_logp_is_the_models_and_scores_follow_the_context(tiny):
    """log p(reply | context) read while sampling equals a teacher-forced forward; the MMI score
    of the same candidate replies changes with the message, and so can the choice."""
    model, tok = tiny
    params = SamplingParams(max_new_tokens=10, candidates=4)
    p = _prompt(tok, "오늘 뭐 먹었어?")
    reply = decoding.generate(model, tok, [p], params, seed=3)[0]
    ids = [list(c.ids) for c in reply.candidates]
    assert len(reply.candidates) == 4 and len({c.text for c in reply.candidates}) > 1
    best = [max(reply.candidates, key=lambda c: c.score).text]
    for msg in ("오늘 뭐 먹었어?", "주말에 시간 돼?", "ㅋㅋㅋ 대박", "어디야 지금"):
        q = _prompt(tok, msg)
        ctx = decoding.reply_logp(model, tok, [q.ids] * 4, ids)
        alone = decoding.reply_logp(model, tok, [q.no_context_ids] * 4, ids)
        scores = [(c - 0.5 * a) / max(len(i), 1) for c, a, i in zip(ctx, alone, ids)]
        best.append(reply.candidates[scores.index(max(scores))].text)
    assert len(set(best[1:])) > 1  # the chosen candidate depends on the message
    want = decoding.reply_logp(model, tok, [p.ids] * 4, ids)
    assert [c.logp for c in reply.candidates] == pytest.approx(want, abs=1e-3)
    alone = decoding.reply_logp(model, tok, [p.no_context_ids] * 4, ids)
    assert [c.logp_no_context for c in reply.candidates] == pytest.approx(alone, abs=1e-3)


def test_same_seed_different_messages_different_replies(engine):
    replies = [engine.reply([{"role": "user", "content": m}], "minji", SamplingParams(max_new_tokens=12), seed=1)
               for m in ("민수야 뭐해?", "이번 주말에 시간 돼?", "밥 먹었어?")]
    assert len(set(replies)) == 3


def test_engine_and_evaluation_call_the_same_decoding(engine, tiny, monkeypatch):
    from pipeline.evaluation.generation import SamplingConfig, generate_replies
    from pipeline.evaluation.scoring import Example
    from data_prep.records import ContextTurn

    calls = []
    real = decoding.generate

    def spy(model, tokenizer, prompts, params=None, **kw):
        calls.append(params)
        return real(model, tokenizer, prompts, params, **kw)

    monkeypatch.setattr(decoding, "generate", spy)
    engine.reply([{"role": "user", "content": "안녕"}], "minji", SamplingParams(max_new_tokens=6), seed=0)
    model, tok = tiny
    ex = Example("민수처럼 답해.", (ContextTurn("철수", "안녕"),), "민수", "")
    cfg = SamplingConfig(replace(SamplingParams(), max_new_tokens=6))
    assert generate_replies(model, tok, [ex], 256, cfg)[0]
    assert len(calls) == 2
    chat, evaluation = calls
    assert replace(chat, max_new_tokens=0) == replace(evaluation, max_new_tokens=0) == \
        replace(SamplingParams(), max_new_tokens=0)  # one set of sampling settings


def test_mixed_adapter_batch_passes_adapter_names(tiny):
    model, tok = tiny
    seen = {}

    class Spy:
        device = model.device

        def generate(self, **kw):
            seen["generate"] = kw.get("adapter_names")
            return model.generate(**{k: v for k, v in kw.items() if k != "adapter_names"})

        def __call__(self, **kw):
            seen["forward"] = kw.pop("adapter_names", None)
            return model(**kw)

    a, b = replace(_prompt(tok, "뭐해?"), adapter="minji"), _prompt(tok, "배고파")
    out = decoding.generate(Spy(), tok, [a, b], SamplingParams(max_new_tokens=4, candidates=2), seed=0)
    assert len(out) == 2
    assert seen["generate"] == seen["forward"] == ["minji", "minji", "__base__", "__base__"]


def test_top_k_nucleus_equals_transformers_warpers():
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(3, 500) * 3
    want = scores
    for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
        want = warper(None, want)
    got = decoding.TopKNucleus(0.8, 50, 0.9)(None, scores)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)])
    assert 1 < int(torch.isfinite(got[0]).sum()) < 50


def test_a_rambling_candidate_is_cut_once_a_sibling_has_finished():
    import torch

    stop, pad = 9, 0
    lag = decoding.Laggards(prompt_width=2, group=2, stops=[stop])
    rows = torch.tensor([[1, 1, 5, stop] + [pad] * 7, [1, 1] + [6] * 9, [1, 1] + [7] * 9, [1, 1] + [8] * 9])
    # prompt 0: a sibling ended after 2 tokens, so its other row stops at 2 * 2 + 8 = 12 tokens, not before
    assert lag(rows, None).tolist() == [True, False, False, False]
    longer = torch.cat([rows, torch.full((4, 3), 6)], dim=1)
    assert lag(longer, None).tolist() == [True, True, False, False]  # prompt 1: nobody finished yet
