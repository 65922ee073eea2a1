"""chatbot.decoding on tiny models: run caps in greedy mode, stop tokens, reranking, one shared function."""
from __future__ import annotations

from dataclasses import replace

import pytest

from chatbot import decoding
from chatbot.decoding import Prompt, SamplingParams
from core.reply_shape import ReplyLimits, bubbles, longest_runs, loop_reason
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


def test_reply_logp_with_shared_prefixes_equals_each_row_alone(tiny):
    """Rows sharing a prefix run it once; each row's sum is still log p(reply | its own prefix), as a
    plain forward of that row alone gives it (different prefixes, repeated ones, 1-token and empty replies)."""
    import torch

    model, tok = tiny
    a, b = _prompt(tok, "뭐해?"), _prompt(tok, "주말에 시간 돼? 영화 보러 가자")
    replies = [tok.encode(t, add_special_tokens=False) for t in ("응 집이야", "ㅋㅋ 좋아 가자", "응", "", "몰라")]
    prefixes = [a.ids, b.ids, a.ids, b.ids, a.no_context_ids]

    def alone(prefix, reply):
        if not reply:
            return 0.0
        ids = torch.tensor([list(prefix) + list(reply)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prefix) - 1:-1]
        return float(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(reply)[:, None]).sum())

    got = decoding.reply_logp(model, tok, prefixes, replies)
    assert got == pytest.approx([alone(p, r) for p, r in zip(prefixes, replies)], abs=1e-3)
    assert got[3] == 0.0 and got[0] != got[1]


def test_no_context_scoring_runs_once_per_distinct_acceptable_reply(tiny, monkeypatch):
    """The MMI baseline costs a forward: identical candidates share one, and a job whose candidates
    are all the same reply gets it once (four sampled rows, one scored)."""
    model, tok = tiny
    calls = []
    real = decoding.no_context_logp
    monkeypatch.setattr(decoding, "no_context_logp", lambda m, t, rows, replies: calls.append(len(rows)) or real(m, t, rows, replies))
    hook = _biased(model, tok, {"▁응": 60.0})
    try:
        reply = decoding.generate(model, tok, [_prompt(tok, "뭐해?")], SamplingParams(max_new_tokens=2, candidates=4), seed=0)[0]
    finally:
        hook.remove()
    assert len({c.ids for c in reply.candidates}) == 1 and calls == [1]
    assert len({c.logp_no_context for c in reply.candidates}) == 1 and reply.candidates[0].logp_no_context is not None


def test_same_seed_different_messages_different_replies(engine):
    replies = [engine.reply([{"role": "user", "content": m}], "minji", SamplingParams(max_new_tokens=12), seed=1)
               for m in ("민수야 뭐해?", "이번 주말에 시간 돼?", "밥 먹었어?")]
    assert len(set(replies)) == 3


def test_engine_and_evaluation_call_the_same_decoding(engine, tiny, monkeypatch):
    from pipeline.evaluation.generation import SamplingConfig, generate_replies
    from pipeline.evaluation.scoring import Example
    from data_prep.records import ContextTurn

    calls = []
    real = decoding.decode

    def spy(model, tokenizer, jobs):
        calls.append(jobs[0].params)
        return real(model, tokenizer, jobs)

    monkeypatch.setattr(decoding, "decode", spy)
    engine.reply([{"role": "user", "content": "안녕"}], "minji", SamplingParams(max_new_tokens=6), seed=0)
    model, tok = tiny
    ex = Example("민수처럼 답해.", (ContextTurn("철수", "안녕"),), "민수", "")
    cfg = SamplingConfig(replace(SamplingParams(), max_new_tokens=6))
    assert generate_replies(model, tok, [ex], 256, cfg)[0]
    assert len(calls) == 2
    chat, evaluation = calls
    assert replace(chat, max_new_tokens=0) == replace(evaluation, max_new_tokens=0) == \
        replace(SamplingParams(), max_new_tokens=0)  # one set of sampling settings


def test_mixed_batch_gives_each_job_its_reply_alone(engine):
    """Jobs of different adapters (and none), prompt lengths, settings and seeds in one batch:
    every candidate's tokens, and the choice, are what the job gets alone."""
    from chatbot.decoding import Job
    from chatbot.routing import BASE_ADAPTER

    hello, hungry = [{"role": "user", "content": "안녕, 오늘 뭐 해?"}], [{"role": "user", "content": "배고파 ㅠㅠ 뭐 먹지"}]
    jobs = [
        Job(engine.prompt(hello, "minji", 10, adapter="minji"), SamplingParams(max_new_tokens=10), 3),
        Job(engine.prompt(hello, None, 8, adapter=BASE_ADAPTER), SamplingParams(temperature=0, max_new_tokens=8)),
        Job(engine.prompt(hungry, "junho", 12, adapter="junho"),
            SamplingParams(temperature=1.2, top_k=20, top_p=0.8, candidates=2, max_new_tokens=12), 4),
    ]
    with engine.exclusive():
        alone = [decoding.decode(engine.model, engine.tokenizer, [j])[0] for j in jobs]
        together = decoding.decode(engine.model, engine.tokenizer, jobs)
    key = lambda r: (r.text, [(c.ids, c.problem, c.ended) for c in r.candidates])  # noqa: E731
    assert [key(r) for r in together] == [key(r) for r in alone]
    assert [len(r.candidates) for r in alone] == [4, 1, 2]
    assert len({r.text for r in alone}) == 3


def test_row_distribution_equals_transformers_warpers():
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(3, 500) * 3
    want = scores
    for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
        want = warper(None, want)
    want = torch.softmax(want, dim=-1)
    for row, p in zip(scores, want):
        idx, probs = decoding.row_distribution(row, 0.8, 50, 0.9)
        got = torch.zeros(500).index_put((idx,), probs)
        assert torch.allclose(got, p, atol=1e-6)
        assert 1 < int((probs > 0).sum()) < 50


def test_a_rambling_candidate_is_cut_once_a_sibling_has_finished():
    lag = decoding.Laggards(groups=[0, 0, 0, 1, 1])
    # job 0: a sibling ended (its reply or its first bubble) after 4 tokens, so its rows still going stop
    # at 4 * 1.5 + 4 = 10 tokens, not before; job 1: nobody finished yet
    assert lag(9, [4, None, 7, None, None]) == [False, False, False, False, False]
    assert lag(10, [4, None, 7, None, None]) == [False, True, False, False, False]
    assert lag(40, [None] * 5) == [False] * 5
    # a row that ended at its first token (a later bubble's "the reply ends here") sets no pace
    assert lag(12, [1, None, None, None, None]) == [False] * 5


def _padded_rows(tok, rows):
    ids, mask = decoding._left_pad(rows, chat_format.pad_id(tok))
    return ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def test_shared_prefill_gives_the_logits_of_prefilled_rows(tiny):
    import torch

    model, tok = tiny
    a, b = _prompt(tok, "뭐해?").ids, _prompt(tok, "오늘 점심 뭐 먹었어? 김치찌개 맛있더라").ids
    ids, mask, pos = _padded_rows(tok, [a, a, a, b, b])
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        cache = decoding.shared_prefill(model, ids, mask, [0, 0, 0, 1, 1])
        cached = cache.get_seq_length()
        step = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=pos[:, -1:], cache=cache).logits[:, -1]
    assert cached == ids.shape[1] - 1
    assert step.shape == full.shape and not torch.equal(full[0], full[3])  # two different prompts
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_narrow_output_layer_gives_the_same_logits_and_is_restored(tiny):
    import torch

    model, tok = tiny
    a = _prompt(tok, "뭐해?").ids
    ids, mask, _ = _padded_rows(tok, [a, a[:-2], a[:-1]])
    head = decoding._output_linear(model)
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
        with decoding.narrow_output_layer(model):
            assert "forward" in head.__dict__  # the W @ h.T path is in place
            narrow = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
            wide = model(input_ids=ids, attention_mask=mask).logits  # more positions: the plain path
    assert "forward" not in head.__dict__
    torch.testing.assert_close(narrow, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wide[:, -1:], plain, rtol=1e-5, atol=1e-5)


def test_narrow_output_layer_reaches_the_head_of_a_persona_with_new_token_rows(engine):
    """The chat's model is a PeftModel whose tied output layer carries the adapter's new-token rows
    (pinned in place): the W @ h.T path must reach the nn.Linear under PEFT's token wrapper, and be
    the one a decoding step goes through."""
    import torch

    with engine.exclusive():
        engine._activate("minji")
        model = engine.model
        head = decoding._output_linear(model)
        assert isinstance(head, torch.nn.Linear) and head.weight.shape[0] == model.get_output_embeddings().weight.shape[0]
        ids = torch.tensor([engine.prompt_ids([{"role": "user", "content": "뭐해?"}], "minji", 8)])
        seen = []
        with torch.inference_mode():
            plain = model(input_ids=ids, logits_to_keep=1).logits
            with decoding.narrow_output_layer(model):
                narrow_forward = head.forward
                head.forward = lambda x: (seen.append(tuple(x.shape)), narrow_forward(x))[1]
                narrow = model(input_ids=ids, logits_to_keep=1).logits
        assert seen and "forward" not in head.__dict__
    torch.testing.assert_close(narrow, plain, rtol=1e-5, atol=1e-5)


class _Recorder:
    """A streamer keeping each put's token ids."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append([int(t) for t in value.reshape(-1).tolist()])

    def end(self):
        self.ended = True


def _newline_ids(tok) -> list[int]:
    return [i for i, b in enumerate(decoding.token_bytes(tok)) if b"\n" in b]


def test_first_bubble_rerank_picks_what_the_whole_reply_rerank_picks_for_one_bubble(tiny):
    model, tok = tiny
    ban = _biased(model, tok, {tok.convert_ids_to_tokens(i): -100.0 for i in _newline_ids(tok)})
    params = SamplingParams(max_new_tokens=12)
    try:
        jobs = [decoding.Job(_prompt(tok, text), params, seed) for seed, text in enumerate(["뭐해?", "배고파"])]
        first = decoding.decode(model, tok, jobs)
        whole = decoding.decode(model, tok, jobs, by_bubble=False)
    finally:
        ban.remove()
    key = lambda r: (r.text, r.chosen.ids, [(c.ids, c.score, c.problem) for c in r.candidates])  # noqa: E731
    assert [key(r) for r in first] == [key(r) for r in whole]
    assert all(len(r.candidates) == 4 and "\n" not in r.text for r in first)


def test_bubble_rerank_streams_each_chosen_bubble_as_a_whole(tiny):
    model, tok = tiny
    newline = tok.convert_ids_to_tokens(_newline_ids(tok)[0])
    hook = _biased(model, tok, {"▁응": 40.0, "▁지금": 38.5, newline: 37.0, chat_format.EOT: 30.0})
    params = SamplingParams(max_new_tokens=24)
    try:
        streamed = _Recorder()
        job = decoding.Job(_prompt(tok, "뭐해?"), params, 5, streamed)
        reply = decoding.decode(model, tok, [job])[0]
        other = decoding.Job(_prompt(tok, "배고파 뭐 먹지"), replace(params, candidates=2), 9)
        together = decoding.decode(model, tok, [other, replace(job, streamer=None)])[1]
    finally:
        hook.remove()
    assert len(reply.bubbles) >= 2 and reply.chosen.text == reply.text
    others = [c for c in reply.candidates if c is not reply.chosen]
    assert len(others) == 3 and all(len(c.text.splitlines()) <= 1 for c in others)  # first bubbles only
    shown = [tok.decode(put) for put in streamed.puts]
    assert [b for text in shown for b in bubbles(text)] == reply.bubbles and len(streamed.puts) >= 2
    assert all(text.endswith("\n") and len(bubbles(text)) == 1 for text in shown[:-1])  # a whole bubble each
    assert streamed.ended
    ids = reply.chosen.ids[:-1] if reply.chosen.ended else reply.chosen.ids
    assert [t for put in streamed.puts for t in put] == list(ids)
    assert (together.text, together.chosen.ids) == (reply.text, reply.chosen.ids)  # the same in a batch


def _scripted_rows(tok, said: list[str], problems: dict[int, str], calls: list, first_ends: int | None = None):
    """A stand-in for ``decoding._decode_rows``: call k (from 1) chooses the first k bubbles of ``said``
    (the last one ends the reply), with the problem ``problems`` gives it; at call ``first_ends`` the first
    row ends the reply where it is and another row adds the bubble."""
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in said]
    eot = tok.convert_tokens_to_ids(chat_format.EOT)

    def cand(k: int, problem=None, end_here=False):
        last = k == len(said) or end_here
        ids_k = tuple(t for part in ids[:k] for t in part) + ((eot,) if last else ())
        return decoding.Candidate("".join(said[:k]).strip(), 1, ids_k, -1.0, None, 0.0, problem, ended=last,
                                  bubble=not last)

    def rows(model, tokenizer, jobs, by_bubble):
        (job,) = jobs
        calls.append((tuple(job.prompt.reply_prefix), job.seed, job.params.candidates, by_bubble))
        k = len(calls)
        chosen = cand(k, problems.get(k))
        if k == first_ends:
            return [decoding.Reply(chosen.text, (cand(k - 1, end_here=True), chosen), picked=1)]
        return [decoding.Reply(chosen.text, (chosen,))]
    return rows, ids


def test_each_later_bubble_is_chosen_among_candidates_after_the_bubbles_before(tiny, monkeypatch):
    """decode's loop: the first bubble, then one batch of candidates per later bubble, each sampled after
    the reply chosen so far (its reply prefix) with a seed of its own, streamed as it is chosen."""
    model, tok = tiny
    calls: list = []
    rows, ids = _scripted_rows(tok, ["응\n", "지금 가\n", "5분만"], {}, calls)
    monkeypatch.setattr(decoding, "_decode_rows", rows)
    streamed = _Recorder()
    reply = decoding.decode(model, tok, [decoding.Job(_prompt(tok, "뭐해?"), SamplingParams(), 7, streamed)])[0]
    assert reply.bubbles == ["응", "지금 가", "5분만"] and reply.chosen.ended
    assert [c[0] for c in calls] == [(), tuple(ids[0]), tuple(ids[0] + ids[1])]
    assert len({c[1] for c in calls}) == 3 and all(c[2] == 4 and c[3] for c in calls)
    assert streamed.puts == ids and streamed.ended


def test_a_later_bubble_whose_candidates_all_fail_the_checks_is_not_shown(tiny, monkeypatch):
    model, tok = tiny
    calls: list = []
    rows, ids = _scripted_rows(tok, ["응\n", "지금 가요\n", "5분만"], {2: "register"}, calls)
    monkeypatch.setattr(decoding, "_decode_rows", rows)
    streamed = _Recorder()
    reply = decoding.decode(model, tok, [decoding.Job(_prompt(tok, "뭐해?"), SamplingParams(), 7, streamed)])[0]
    assert reply.text == "응" and reply.chosen.problem is None and not reply.chosen.bubble
    assert len(calls) == 2 and streamed.puts == ids[:1] and streamed.ended


def test_whether_the_reply_goes_on_is_the_first_rows_draw_not_the_reranking(tiny, monkeypatch):
    """A reranked "end here" (one token) against a bubble would change how often the persona bursts: the
    first row ending the reply ends it, whatever the other rows add."""
    model, tok = tiny
    calls: list = []
    rows, ids = _scripted_rows(tok, ["응\n", "지금 가\n", "5분만"], {}, calls, first_ends=2)
    monkeypatch.setattr(decoding, "_decode_rows", rows)
    reply = decoding.decode(model, tok, [decoding.Job(_prompt(tok, "뭐해?"), SamplingParams(), 7)])[0]
    assert reply.text == "응" and len(calls) == 2


def test_how_many_bubbles_is_the_first_rows_draw_whichever_first_bubble_is_chosen():
    """The first bubbles are reranked; whether the reply goes on after the chosen one is the first row's
    draw: a chosen reply that ended gets a line break (7) for its stop token (1) where the first row went
    on, a chosen bubble ends the reply where the first row ended it, an unfinished first row changes nothing."""
    def cand(ids, ended=False, bubble=False, problem=None, score=0.0):
        return decoding.Candidate("x", len(ids), tuple(ids), -1.0, None, score, problem, ended, bubble)

    def drawn(first, chosen):
        return decoding._as_drawn(decoding.Reply("x", (first, chosen), picked=1), (7,)).chosen

    went_on, ended, cut = cand([5, 7], bubble=True), cand([5, 1], ended=True), cand([5, 5], problem="unfinished")
    assert drawn(went_on, cand([9, 1], ended=True)) == cand([9, 7], bubble=True)
    assert drawn(ended, cand([9, 7], bubble=True)) == cand([9, 7])
    assert drawn(cut, cand([9, 7], bubble=True)) == cand([9, 7], bubble=True)
    assert drawn(went_on, cand([9, 9])) == cand([9, 9])  # cut at its token limit: nothing can follow
    assert drawn(ended, cand([9, 1], ended=True)) == cand([9, 1], ended=True)


@pytest.fixture(scope="module")
def backward_engine(chat_dirs, tmp_path_factory):
    """The two tiny personas and a (random, seeded) backward model loaded beside them, as the chat does."""
    from chatbot.adapters import choose_base, discover
    from chatbot.engine import Engine
    from tests.chat_helpers import make_adapter

    ext, adapters = chat_dirs
    path = make_adapter(ext, tmp_path_factory.mktemp("backward") / "backward", "dialogue", "나", seed=9)
    model, tok, manifest = load_extended(ext)
    infos = discover(adapters)
    return Engine.from_loaded(model, tok, manifest, infos, choose_base(infos, None), backward=path)


def test_the_backward_model_loads_beside_the_personas_and_is_no_persona(backward_engine, engine):
    from chatbot.routing import BASE_ADAPTER
    from core.models import BACKWARD_ADAPTER

    assert decoding.has_backward(backward_engine.model) and not decoding.has_backward(engine.model)
    assert BACKWARD_ADAPTER not in [p.name for p in backward_engine.personas]
    history = [{"role": "user", "content": "밥 먹었어?"}, {"role": "assistant", "content": "아직"},
               {"role": "user", "content": "같이 먹자"}]
    assert backward_engine.prompt(history, "minji", 8).message == ("철수", "같이 먹자")
    assert engine.prompt(history, "minji", 8).message is None  # no backward model: nothing to score it by
    bare = backward_engine.prompt(history, None, 8)  # the bare base: its rows routed past every adapter
    assert bare.message == ("나", "같이 먹자") and bare.adapter == BASE_ADAPTER
    assert backward_engine.reply(history, None, SamplingParams(max_new_tokens=6), seed=0)


def _backward_per_token(engine, speaker: str, reply: str, message: str) -> float:
    """log p(message | reply) per message token, one full forward routed through the backward adapter."""
    import torch

    from chatbot.routing import per_row_adapters
    from core.models import BACKWARD_ADAPTER

    r = chat_format.render_backward(engine.tokenizer, speaker, reply, message)
    ids = torch.tensor([r.input_ids])
    with torch.no_grad(), per_row_adapters(engine.model, [BACKWARD_ADAPTER]):
        logits = engine.model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[r.reply_start - 1:-1], -1).gather(1, ids[0, r.reply_start:, None])[:, 0]
    return float(lp.sum()) / len(lp)


def test_candidates_are_reranked_with_the_backward_models_log_prob_of_the_message(backward_engine):
    from chatbot.decoding import Job

    hello = [{"role": "user", "content": "안녕, 오늘 뭐 해?"}]
    prompt = backward_engine.prompt(hello, "minji", 10, adapter="minji")
    with backward_engine.exclusive():
        on, off = (decoding.decode(backward_engine.model, backward_engine.tokenizer,
                                   [Job(prompt, SamplingParams(max_new_tokens=10, backward_weight=w), 3)])[0]
                   for w in (1.0, 0.0))
        scored = [c for c in on.candidates if c.logp_no_context is not None]
        assert len(scored) >= 2
        for c in scored:
            mmi = decoding.mmi_score(c.logp, c.logp_no_context, c.tokens, 0.5)
            want = _backward_per_token(backward_engine, "철수", c.text, "안녕, 오늘 뭐 해?")
            assert c.score - mmi == pytest.approx(want, rel=1e-3, abs=1e-3)
    assert [c.ids for c in on.candidates] == [c.ids for c in off.candidates]  # same samples, only the score differs
    assert all(c.score == decoding.mmi_score(c.logp, c.logp_no_context, c.tokens, 0.5)
               for c in off.candidates if c.logp_no_context is not None)
    assert on.chosen.score == max(c.score for c in scored)


def test_the_bare_base_routed_past_the_backward_model_replies_as_with_adapters_off(backward_engine, engine):
    history = [{"role": "user", "content": "주말에 뭐 해?"}]
    params = SamplingParams(max_new_tokens=8, backward_weight=0.0)  # same score: only the routing differs
    assert backward_engine.reply(history, None, params, seed=2) == engine.reply(history, None, params, seed=2)


def test_the_evaluation_reranks_with_the_backward_model_as_the_chat_does_and_puts_it_back(tiny, chat_dirs,
                                                                                          tmp_path, monkeypatch):
    import torch

    from chatbot.routing import BASE_ADAPTER
    from data_prep.records import ContextTurn
    from pipeline.evaluation.generation import SamplingConfig, generate_replies
    from pipeline.evaluation.runner import backward_attached
    from pipeline.evaluation.scoring import Example
    from tests.chat_helpers import make_adapter

    model, tok = tiny
    path = make_adapter(chat_dirs[0], tmp_path / "backward", "dialogue", "나", seed=9)
    ex = Example("민수처럼 답해.", (ContextTurn("철수", "안녕"), ContextTurn("민수", "응")), "민수", "")
    seen = []
    real = decoding.decode
    monkeypatch.setattr(decoding, "decode", lambda m, t, jobs: seen.extend(j.prompt for j in jobs) or real(m, t, jobs))
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with backward_attached(model, path) as reranking:
            assert decoding.has_backward(reranking)
            cfg = SamplingConfig(replace(SamplingParams(), max_new_tokens=6))
            assert generate_replies(reranking, tok, [ex], 256, cfg)[0]
        after = model(input_ids=ids).logits
    assert seen[0].message == ("철수", "안녕") and seen[0].adapter == BASE_ADAPTER  # the partner's turn, not the burst
    assert torch.equal(before, after) and not decoding.has_backward(model)


def test_the_token_that_would_swear_as_the_persona_never_does_is_banned(tiny):
    """ReplyShaper bans the token that completes a swear word of a family the persona's turns never use (here
    ㅅㅂ, however the tokenizer splits it); a persona whose turns use that family keeps it."""
    import torch

    _, tok = tiny
    prompt = _prompt(tok, "뭐해?").ids
    so_far, last = tok.encode("아 ㅅ", add_special_tokens=False), tok.encode("ㅂ", add_special_tokens=False)
    row = list(prompt) + so_far + last[:-1]
    stops = decoding.stop_token_ids(tok)
    for limits, banned in ((LIMITS, True), (replace(LIMITS, profanity=frozenset({"씨발"})), False),
                           (replace(LIMITS, profanity=frozenset({"존나"})), True)):
        scores = torch.zeros(1, len(tok))
        scores[0, last[-1]] = 10.0  # the likeliest next token completes "ㅅㅂ"
        decoding.ReplyShaper(tok, [len(prompt)], [limits], stops, [5])(torch.tensor([row]), scores)
        assert (scores[0, last[-1]] == float("-inf")) == banned, limits.profanity
        assert torch.isfinite(scores[0, :last[-1]]).all()  # nothing else is touched


def test_a_word_the_next_character_may_make_innocent_is_not_banned_before_it(tiny):
    """"엄마를 졸라" may go on as 졸라서 (pestered): the shaper leaves the token that would write it, and bans the
    one that would leave 졸라 (the 존나 family) as a word of its own."""
    import torch

    _, tok = tiny
    prompt = _prompt(tok, "뭐해?").ids
    row = list(prompt) + tok.encode("엄마를 졸라", add_special_tokens=False)
    stops = decoding.stop_token_ids(tok)
    innocent, swearing = tok.encode("서", add_special_tokens=False)[0], tok.encode(" 뭐", add_special_tokens=False)[0]
    assert tok.decode([swearing]).startswith(" ") or tok.convert_ids_to_tokens(swearing).startswith("▁")
    scores = torch.zeros(1, len(tok))
    scores[0, innocent], scores[0, swearing] = 10.0, 9.0
    decoding.ReplyShaper(tok, [len(prompt)], [LIMITS], stops, [5])(torch.tensor([row]), scores)
    assert scores[0, innocent] == 10.0 and scores[0, swearing] == float("-inf")


def test_kept_no_context_prefix_gives_the_same_scores_and_is_reused(chat_dirs):
    """keep_prefixes: the second reply's no-context scores come from the kept forward of the instruction
    (a marked copy shows it is read) and equal a fresh model's; the kept cache is not changed by its use."""
    model, tok, _ = load_extended(chat_dirs[0])
    model.eval()
    rows = [_prompt(tok, "뭐해?")] * 3
    replies = [tok.encode(t, add_special_tokens=False) for t in ("밥 먹어", "응 지금 가", "ㅋㅋ")]
    plain = decoding.no_context_logp(model, tok, rows, replies)
    decoding.keep_prefixes(model)
    first = decoding.no_context_logp(model, tok, rows, replies)
    again = decoding.no_context_logp(model, tok, rows, replies)
    assert first == pytest.approx(plain, abs=1e-5) and again == pytest.approx(plain, abs=1e-5)
    kept = decoding._PREFIX_CACHES[model]
    assert len(kept) == 1
    key = next(iter(kept))
    kept[key] = (kept[key][0], kept[key][1] + 1.0)  # mark the kept logits: every reply's first token gains 1
    marked = decoding.no_context_logp(model, tok, rows, replies)
    assert marked == pytest.approx([x + 1.0 for x in plain], abs=1e-5)
    other = [_prompt(tok, "뭐해?", ReplyLimits())]  # same instruction: same prefix, same kept entry
    assert decoding.no_context_logp(model, tok, other, replies[:1])[0] == pytest.approx(plain[0] + 1.0, abs=1e-5)
    assert len(kept) == 1
