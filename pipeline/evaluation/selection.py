"""Next-reply selection: does the model pick the true reply out of 20 (Hits@1 of 20)?

For a held-out (context, reply), the true reply is ranked among 19 distractors in the
same context; a hit is the true reply ranked first (chance 1/20 = 0.05). Three item sets:

- **persona**: the persona's held-out replies; distractors are the persona's own
  replies from *other* conversations (held-out ones first, then train ones when the
  held-out split is too small), so style cannot tell them apart, only the context can;
- **qa**: general Korean Q/A that no training stage saw (ChatbotData's fixed held-out
  split, :func:`data_prep.chatbot_data.load_qa`), the question as the user's turn and
  19 other held-out answers (different text; drawn from the other items' answers) as
  distractors;
- **switch**: a change of topic (:func:`switch_items`): one held-out exchange, its answer as the persona's
  turn, then another held-out question; the true reply answers that last question, and the first distractor
  answers the question before it (an answer to the held-out question most like it). ``previous_first`` in
  :func:`summarize` is the share of items where that distractor ranks first: a persona that answers the
  previous message instead of the last one.

Five scores rank the candidates (each is reported, see :data:`SCORES`):

- ``mean``: mean log-prob per token of the reply given the context;
- ``pmi``: log p(reply | context) - log p(reply | no context), both summed over the
  reply's tokens and EOT, the "no context" prompt being the same instruction with no
  turns. A short generic reply ("ㅋㅋ 그치") is likely after any message and wins
  under ``mean``; PMI cancels what the reply gets without the message and keeps only
  what the message adds (the maximum-mutual-information criterion of Li et al. 2016);
- ``pmi_mean``: PMI per reply token (PMI favours long replies, whose many tokens can
  each gain a little from the context);
- ``mmi``: the score the chat picks its reply by among its sampled candidates
  (:mod:`chatbot.decoding`): ``(log p(reply | context) - 0.5 log p(reply | no context)) / tokens``,
  plus ``log p(message | reply) / message tokens`` where there is a backward model (``pmi_bidi``),
  so its Hits@1 says how often the chat's own reranking would choose the true reply;
- ``pmi_marginal``: log p(reply | context) - log p(reply), where p(reply) is the model's own
  marginal, the mean of p(reply | m) over K other held-out messages m of the set
  (``--marginal-contexts``, :data:`MARGINAL_CONTEXTS` in the docs' figures; none of them an item's
  context, none answered by a candidate). Off by default: measured, it ranks the true reply better
  on average but first no more often than ``pmi`` (docs/conversation.md).
  The "no context" prompt of ``pmi`` is one the model never saw in training (a reply right
  after the instruction), so its p(reply) is a rough stand-in for that marginal; with the
  candidates drawn from the same kind of replies, ranking by p(reply | context) / p(reply)
  is the Bayes choice when p(reply) is the true marginal. Costs K prompt passes per
  candidate text (cached by text: the Q/A pool is small, the persona pool a few dozen);
- ``pmi_bidi``: ``pmi`` + log p(message | reply) by the backward model (``core.models.BACKWARD_DIR``,
  trained on ChatbotData turned around; the message being the last turn not the persona's): the
  bidirectional MMI of Li et al. 2016, the reranker of DialoGPT. For a fixed message, log p(message |
  reply) ranks replies as the PMI does (it is PMI + log p(message)), so the sum adds up two estimates of
  the same quantity whose errors differ: the backward one needs no p(reply) at all, and it is the same
  general model for every system, persona adapters included. Reported where the extended base has a
  backward model; the chat reranks by it too (:mod:`chatbot.decoding`).

With a memory (``python -m pipeline.evaluate --memory``, system ``adapter_memory``) each item's
prompt also shows the persona's own past replies to messages like the item's (:mod:`core.memory`,
train pairs only; the items are held-out ones); the no-context prompt stays the bare instruction,
the memory being part of what the context brings.

Each Hits@1 comes with a 95% bootstrap interval over the items (:func:`interval`), and
:func:`paired` compares two systems on the same items.

Cost: each item is one shared-prefix pass (:func:`.scoring.score_group`: the context
once, the 20 candidates as a batch of tails) plus the candidates' no-context and marginal
scores, cached by text, since the candidates come from a small pool.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from chatbot.decoding import SamplingParams, mmi_score
from core.chat_format import render, render_backward
from core.errors import UserError
from core.memory import Memory, Recalled
from data_prep.chatbot_data import QA
from data_prep.records import ContextTurn
from pipeline.evaluation.scoring import Example, ReplyScore, message_of, render_group, score_group
from pipeline.evaluation.tasks import persona_pairs

CANDIDATES = 20  # the true reply + 19 distractors (ConvAI2's Hits@1 of 20)
SCORES = ("mean", "pmi", "pmi_mean", "mmi", "pmi_marginal", "pmi_bidi")
MARGINAL_CONTEXTS = 32  # other held-out messages p(reply) is averaged over for ``pmi_marginal``, when asked for
MMI_LAMBDA = SamplingParams().mmi_lambda  # the chat's weight of log p(reply | no context)
BACKWARD_WEIGHT = SamplingParams().backward_weight  # and of log p(message | reply) per message token


@dataclass(frozen=True)
class SelectionItem:
    """One held-out reply in its context, and the distractors it is ranked against."""

    example: Example  # instruction, context, persona; ``response`` is the true reply
    distractors: tuple[str, ...]
    # other messages of the same set (none an item's, none answered by a candidate): ``pmi_marginal``'s p(reply)
    # is the mean of p(reply | each of them). The same tuple for every item of a set, so scores are shared by text
    marginal: tuple[tuple[ContextTurn, ...], ...] = ()
    previous: bool = False  # the first distractor answers the message before the last one (a switch item)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The true reply first, then the distractors."""
        return (self.example.response or "",) + self.distractors


@dataclass(frozen=True)
class Selected:
    """Scores of one item's candidates (true reply first) with and without the context."""

    with_context: tuple[ReplyScore, ...]
    without_context: tuple[ReplyScore, ...]
    marginal: tuple[float, ...] | None = None  # log mean_k p(candidate | marginal context k); None: not measured
    backward: tuple[ReplyScore, ...] | None = None  # log p(message | candidate) by the backward model; None: none
    previous: bool = False  # the first distractor answers the message before the last one (SelectionItem's)

    def has(self, score: str) -> bool:
        """Whether ``score`` can be computed for this item (``pmi_marginal`` needs marginal contexts,
        ``pmi_bidi`` backward scores)."""
        return {"pmi_marginal": self.marginal, "pmi_bidi": self.backward}.get(score, ()) is not None

    def values(self, score: str, backward_weight: float | None = None) -> list[float]:
        """One value per candidate under ``score`` (one of :data:`SCORES`); higher = chosen.
        ``backward_weight``: the backward term's weight in ``mmi`` (default :data:`BACKWARD_WEIGHT`, the chat's)
        and ``pmi_bidi`` (default 1), for measuring other weights (bench/rerank_weight_bench.py)."""
        if score == "mean":
            return [s.mean for s in self.with_context]
        if score == "pmi_marginal":
            if self.marginal is None:
                raise ValueError("pmi_marginal: this item was scored without marginal contexts")
            return [c.logprob - m for c, m in zip(self.with_context, self.marginal)]
        pmi = [c.logprob - n.logprob for c, n in zip(self.with_context, self.without_context)]
        if score == "pmi":
            return pmi
        if score == "pmi_bidi":
            if self.backward is None:
                raise ValueError("pmi_bidi: this item was scored without a backward model")
            mu = 1.0 if backward_weight is None else backward_weight
            return [p + mu * b.logprob for p, b in zip(pmi, self.backward)]
        if score == "pmi_mean":
            return [p / c.tokens for p, c in zip(pmi, self.with_context)]
        if score == "mmi":  # the chat's: with the backward model's term where the item has it
            w = BACKWARD_WEIGHT if backward_weight is None else backward_weight
            back = [w * b.mean for b in self.backward] if self.backward else [0.0] * len(pmi)
            return [mmi_score(c.logprob, n.logprob, c.tokens, MMI_LAMBDA) + b
                    for c, n, b in zip(self.with_context, self.without_context, back)]
        raise ValueError(f"unknown score {score!r}; one of {SCORES}")

    def hit(self, score: str, backward_weight: float | None = None) -> float:
        """1 when the true reply alone scores highest; 1/k when it ties with k-1 others (a fair coin)."""
        return _first(self.values(score, backward_weight), 0)

    def previous_first(self, score: str) -> float:
        """For a switch item: 1 when the answer to the previous message (the first distractor) alone scores
        highest, 1/k when it ties with k-1 others; the same fair draw as :meth:`hit`."""
        return _first(self.values(score), 1)

    def rank(self, score: str) -> float:
        """Rank of the true reply (1 = first); ties share the mean of their ranks."""
        v = self.values(score)
        return 1 + sum(x > v[0] for x in v[1:]) + sum(x == v[0] for x in v[1:]) / 2


def _first(values: Sequence[float], i: int) -> float:
    """1 when candidate ``i`` alone scores highest, 1/k when it ties with k-1 others (a fair coin), else 0."""
    top = max(values)
    return 0.0 if values[i] < top else 1 / sum(x == top for x in values)


def pick_distractors(truth: str, pool: Sequence[str], k: int, rng: random.Random,
                     taken: Sequence[str] = ()) -> tuple[str, ...]:
    """Up to ``k`` distinct texts of ``pool``, none equal to ``truth`` or in ``taken``, seeded."""
    skip = {truth.strip(), *(t.strip() for t in taken)}
    options = [t for t in dict.fromkeys(p.strip() for p in pool) if t and t not in skip]
    return tuple(rng.sample(options, min(k, len(options))))


def persona_items(data: Path, persona: str, instruction: str, n: int, seed: int,
                  candidates: int = CANDIDATES, marginal: int = 0) -> list[SelectionItem]:
    """``n`` held-out pairs of ``persona`` (seeded), each with replies of other conversations as distractors,
    and ``marginal`` contexts of other pairs (held-out first) whose replies are none of the candidates."""
    val = persona_pairs(data, "validation", persona)
    try:
        train = persona_pairs(data, "train", persona)
    except UserError:  # no train.jsonl or no train pair: held-out distractors only
        train = []
    rng = random.Random(seed)
    picked = rng.sample(val, min(n, len(val)))
    items = []
    for p in picked:
        held = pick_distractors(p.response, [q.response for q in val if q.conversation_id != p.conversation_id],
                                candidates - 1, rng)
        seen = pick_distractors(p.response, [q.response for q in train if q.conversation_id != p.conversation_id],
                                candidates - 1 - len(held), rng, held)
        items.append(SelectionItem(Example(instruction, tuple(p.context), persona, p.response), held + seen))
    pool = {c.strip() for it in items for c in it.candidates}
    mine = {tuple(p.context) for p in picked}
    held_ctx, seen_ctx = ([tuple(q.context) for q in pairs if q.response.strip() not in pool and tuple(q.context)
                           not in mine] for pairs in (val, train))
    return with_marginal(items, held_ctx, seen_ctx, marginal, seed)


def qa_items(rows: Sequence[QA], n: int, seed: int, persona: str, user: str,
             candidates: int = CANDIDATES, marginal: int = 0) -> list[SelectionItem]:
    """``n`` Q/A rows with distinct answers (seeded); each item's distractors are answers of the other items.

    With fewer than ``candidates`` items the pool is topped up to ``candidates`` answers, so every item
    still gets its 19 distractors; the pool being small keeps the no-context scores few (one per answer).
    ``marginal`` questions of other rows (none an item's, none answered by a pool answer) give
    ``pmi_marginal``'s p(reply).
    """
    rng = random.Random(seed)
    unique = list({r.answer.strip(): r for r in rows}.values())  # one question per answer: one true reply
    rng.shuffle(unique)
    pool = [r.answer for r in unique[:max(n, candidates)]]
    items = [SelectionItem(Example("", (ContextTurn(user, r.question),), persona, r.answer),
                           pick_distractors(r.answer, pool, candidates - 1, rng))
             for r in unique[:n]]
    taken = {a.strip() for a in pool} | {r.question.strip() for r in unique[:n]}
    others = [(ContextTurn(user, r.question),) for r in rows
              if r.answer.strip() not in taken and r.question.strip() not in taken]
    return with_marginal(items, others, (), marginal, seed)


def switch_items(rows: Sequence[QA], n: int, seed: int, persona: str, user: str,
                 candidates: int = CANDIDATES) -> list[SelectionItem]:
    """``n`` changes of topic from Q/A rows with distinct answers (seeded): the context is a first question,
    its answer as ``persona``'s turn, and a second question, whose answer is the true reply. The first
    distractor answers the first question: the answer of the row whose question shares the most character
    bigrams with it (the first answer itself would be an echo of the persona's turn, which the chat rejects
    anyway); the others are answers of the other items (:func:`pick_distractors`)."""
    rng = random.Random(f"switch:{seed}")
    unique = list({r.answer.strip(): r for r in rows}.values())
    rng.shuffle(unique)
    pairs = [(unique[2 * k], unique[2 * k + 1]) for k in range(min(n, len(unique) // 2))]
    pool = [r.answer for r in unique[:max(2 * len(pairs), candidates + 2)]]  # less the truth, near, first answer
    grams = [_bigrams(r.question) for r in unique]
    items = []
    for first, second in pairs:
        mine = _bigrams(first.question)
        taken = {first.answer.strip(), second.answer.strip()}
        near, _ = max(((r, g) for r, g in zip(unique, grams) if r.answer.strip() not in taken),
                      key=lambda rg: len(mine & rg[1]) / max(len(mine | rg[1]), 1))
        context = (ContextTurn(user, first.question), ContextTurn(persona, first.answer),
                   ContextTurn(user, second.question))
        others = pick_distractors(second.answer, pool, candidates - 2, rng, (near.answer, first.answer))
        items.append(SelectionItem(Example("", context, persona, second.answer), (near.answer,) + others,
                                   previous=True))
    return items


def _bigrams(text: str) -> frozenset[str]:
    t = "".join(text.split())
    return frozenset(t[i:i + 2] for i in range(len(t) - 1))


def with_marginal(items: list[SelectionItem], held: Sequence[tuple[ContextTurn, ...]],
                  seen: Sequence[tuple[ContextTurn, ...]], k: int, seed: int) -> list[SelectionItem]:
    """The items with ``k`` marginal contexts: distinct ones of ``held`` (seeded), topped up from ``seen``
    when ``held`` has too few. A generator of its own, so the items and distractors stay those drawn
    without it."""
    rng = random.Random(f"marginal:{seed}")
    chosen: list[tuple[ContextTurn, ...]] = []
    for group in (held, seen):
        options = [c for c in dict.fromkeys(group) if c and c not in chosen]
        chosen += rng.sample(options, min(k - len(chosen), len(options)))
    return [replace(it, marginal=tuple(chosen)) for it in items] if chosen else items


def score_items(model, tokenizer, items: Sequence[SelectionItem], instruction: str, max_length: int | None,
                progress=None, bare: dict[str, ReplyScore] | None = None,
                memories: Sequence[Sequence[Any]] | None = None,
                without_memory: Sequence[Selected | None] | None = None,
                marginal: dict[tuple[str, tuple], float] | None = None) -> list[Selected | None]:
    """Score every item's candidates after ``instruction``, with and without the context (and after each
    of the item's marginal contexts, when it has them).

    None where the candidates do not fit ``max_length`` even with no context. ``bare`` caches the
    no-context score of each text, ``marginal`` its marginal log-prob: pass the same dicts to calls
    with the same model and instruction.
    ``memories``: per item, the remembered exchanges shown with its context (:func:`recall_all`);
    ``without_memory``: the same items already scored with no memory, reused for the items that
    recall nothing (their prompt is the same, so are their scores).
    """
    bare = {} if bare is None else bare
    marginal = {} if marginal is None else marginal
    out: list[Selected | None] = []
    for i, item in enumerate(items):
        e = item.example
        shown = tuple(memories[i]) if memories is not None else ()
        if not shown and without_memory is not None:
            out.append(without_memory[i])
            if progress is not None:
                progress.update(1)
            continue
        renders = render_group(
            tokenizer, [Example(instruction, e.context, e.persona, c, shown) for c in item.candidates], max_length)
        if renders is None:
            out.append(None)
        else:
            with_context = score_group(model, tokenizer, renders)
            missing = [c for c in dict.fromkeys(item.candidates) if c not in bare]
            if missing:
                alone = [render(tokenizer, instruction, (), e.persona, c, None) for c in missing]
                bare.update(zip(missing, score_group(model, tokenizer, alone)))
            marg = marginal_logprobs(model, tokenizer, item, instruction, max_length, marginal)
            out.append(Selected(tuple(with_context), tuple(bare[c] for c in item.candidates), marg,
                                previous=item.previous))
        if progress is not None:
            progress.update(1)
    return out


def backward_scores(model, tokenizer, items: Sequence[SelectionItem],
                    progress=None) -> list[tuple[ReplyScore, ...] | None]:
    """log p(message | candidate) of every item's candidates by ``model``, a backward model
    (:func:`core.chat_format.render_backward`; the message: :func:`.scoring.message_of`); None for an item
    with no message. The same for every system: pass it to :func:`with_backward` for each."""
    out: list[tuple[ReplyScore, ...] | None] = []
    for item in items:
        msg = message_of(item.example)
        if msg is None:
            out.append(None)
        else:
            renders = [render_backward(tokenizer, msg.speaker, c, msg.text) for c in item.candidates]
            out.append(tuple(score_group(model, tokenizer, renders)))
        if progress is not None:
            progress.update(1)
    return out


def with_backward(selected: Sequence[Selected | None],
                  backward: Sequence[tuple[ReplyScore, ...] | None]) -> list[Selected | None]:
    """The scored items with their backward scores (:func:`backward_scores` of the same items)."""
    return [None if s is None else replace(s, backward=b) for s, b in zip(selected, backward)]


def marginal_logprobs(model, tokenizer, item: SelectionItem, instruction: str, max_length: int | None,
                      cache: dict[tuple[str, tuple], float]) -> tuple[float, ...] | None:
    """log (1/K) sum_k p(candidate | marginal context k) per candidate, the model's own p(reply) over
    messages of the item's kind; cached by (text, contexts). None when the item has no marginal contexts.

    Each marginal context is one shared-prefix pass with the missing candidates as tails; a context is
    cut from its oldest turn to fit ``max_length`` as the item's own is.
    """
    if not item.marginal:
        return None
    key = item.marginal
    missing = [c for c in dict.fromkeys(item.candidates) if (c, key) not in cache]
    if missing:
        persona = item.example.persona
        per_context = []
        for context in key:
            renders = render_group(tokenizer, [Example(instruction, context, persona, c) for c in missing],
                                   max_length)
            if renders is None:  # cannot happen once the item itself fitted; no figure rather than a wrong one
                return None
            per_context.append([s.logprob for s in score_group(model, tokenizer, renders)])
        for j, c in enumerate(missing):
            cache[(c, key)] = _log_mean_exp([row[j] for row in per_context])
    return tuple(cache[(c, key)] for c in item.candidates)


def _log_mean_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def recall_all(memory: Memory, items: Sequence[SelectionItem]) -> list[list[Recalled]]:
    """What ``memory`` recalls for each item's context, as the item's persona."""
    return [memory.recall(it.example.persona, it.example.context) for it in items]


def memory_overlap(items: Sequence[SelectionItem], memories: Sequence[Sequence[Recalled]]) -> dict[str, int]:
    """How the memory met the items: items with a recalled exchange, exchanges shown, and items where a
    shown reply is the true reply or one of the distractors (the memory then points at a candidate)."""
    def shown(i: int) -> set[str]:
        return {m.reply.strip() for m in memories[i]}

    return {"items": len(items), "with_memory": sum(1 for m in memories if m),
            "shown": sum(len(m) for m in memories),
            "truth_shown": sum(1 for i, it in enumerate(items) if it.candidates[0].strip() in shown(i)),
            "distractor_shown": sum(1 for i, it in enumerate(items)
                                    if shown(i) & {c.strip() for c in it.distractors})}


def summarize(selected: Sequence[Selected | None]) -> dict[str, object]:
    """Hits@1 (with its 95% bootstrap interval, :func:`interval`) and mean rank of the true reply under each
    score, chance level, items scored and skipped; for switch items also ``previous_first``, the share where
    the answer to the previous message ranks first (:meth:`Selected.previous_first`)."""
    kept = [s for s in selected if s is not None]
    n = len(kept)
    out: dict[str, object] = {"n": n, "skipped": len(selected) - n,
                              "chance": sum(1 / len(s.with_context) for s in kept) / n if n else None}
    for score in SCORES:
        some = [s for s in kept if s.has(score)]  # pmi_marginal: the items that had marginal contexts
        hits = [s.hit(score) for s in some]
        out[score] = {"hits1": sum(hits) / len(hits) if hits else None, "hits1_ci95": interval(hits),
                      "mean_rank": sum(s.rank(score) for s in some) / len(some) if some else None}
        switched = [s.previous_first(score) for s in some if s.previous]
        if switched:
            out[score]["previous_first"] = sum(switched) / len(switched)
    return out


RESAMPLES = 1000  # bootstrap resamples of the items behind a Hits@1 interval


@lru_cache(maxsize=8)
def _resamples(n: int) -> tuple[tuple[int, ...], ...]:
    """The same seeded draws of ``n`` item indices (with replacement) for every system and score."""
    rng = random.Random(f"bootstrap:{n}")
    return tuple(tuple(rng.randrange(n) for _ in range(n)) for _ in range(RESAMPLES))


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-item values (hits, or paired differences of hits):
    how far the figure moves on another draw of as many items like these. None for no items."""
    if not values:
        return None
    n = len(values)
    means = sorted(sum(values[i] for i in draw) / n for draw in _resamples(n))
    tail = (1 - level) / 2
    return means[int(tail * RESAMPLES)], means[min(RESAMPLES - 1, int((1 - tail) * RESAMPLES))]


def paired(a: Sequence[Selected | None], b: Sequence[Selected | None], score: str) -> dict[str, Any] | None:
    """System ``a`` against ``b`` on the same items (the same order): the Hits@1 difference a - b over the
    items both scored, its 95% bootstrap interval, and the items each one alone gets right. Pairing removes
    what the items share (how hard each one is), so the interval is narrower than two separate ones."""
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and x.has(score) and y.has(score)]
    if not both:
        return None
    hits = [(x.hit(score), y.hit(score)) for x, y in both]
    diff = [h - g for h, g in hits]
    return {"n": len(diff), "diff": sum(diff) / len(diff), "ci95": interval(diff),
            "a_only": sum(1 for h, g in hits if h > g), "b_only": sum(1 for h, g in hits if g > h)}
