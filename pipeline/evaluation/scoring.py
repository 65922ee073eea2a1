"""Log-likelihood of a reply given its context, scored exactly as training sees it.

Every example goes through :func:`core.chat_format.render`; the score of a
reply is the sum of ``log p(token)`` over the positions ``render`` labels (the
reply tokens and the EOT that ends them), so ``score.logprob == -loss * n`` for
the model's own loss on the same ids (a test holds this).

Speed (CPU, 262k-token vocabulary): the vocabulary projection costs as much as
the rest of the model per token, so logits are computed only where a label is.
A group of examples that share a prompt (the 17 style variants of one reply) is
scored with one pass over the shared prefix, whose KV cache is then repeated for
the batch of differing suffixes (about 3x faster than scoring each variant in
full); the output layer then sees only their labelled positions, not the padding
of the shorter ones (the training loss's ``project``, so logits match the model's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core.chat_format import IGNORE_INDEX, Rendered, pad_id, render
from core.models import cache_name


@dataclass(frozen=True)
class Example:
    """One reply to score (or to generate when ``response`` is None) in its context."""

    instruction: str
    context: tuple[Any, ...]  # ContextTurn-like: .speaker, .text (oldest first)
    persona: str
    response: str | None = None
    memory: tuple[Any, ...] = ()  # past exchanges shown in the system turn (core.memory.Recalled)


@dataclass(frozen=True)
class ReplyScore:
    """Summed log-probability of the supervised tokens (reply + EOT) and their count."""

    logprob: float
    tokens: int

    @property
    def mean(self) -> float:
        """Mean log-prob per token: comparable across replies of different lengths."""
        return self.logprob / self.tokens


def message_of(e: Example) -> Any | None:
    """The turn ``e``'s reply answers: the last one of its context not the persona's (None: none); the
    backward model's message."""
    theirs = [t for t in e.context if t.speaker != e.persona]
    return theirs[-1] if theirs else None


def render_group(tokenizer, examples: Sequence[Example], max_length: int | None) -> list[Rendered] | None:
    """Render examples that share instruction and context with the *same* kept context.

    ``render`` trims the context to fit each reply; variants of different length
    would then see different context. Here the context is cut once, to what fits
    the longest reply, so every variant is scored on the same prompt. None when
    even the instruction plus the longest reply do not fit.
    """
    first = [render(tokenizer, e.instruction, e.context, e.persona, e.response, max_length, e.memory)
             for e in examples]
    if any(r is None for r in first):
        return None
    keep = min(r.context_turns for r in first)
    if all(r.context_turns == keep for r in first):
        return first  # type: ignore[return-value]
    out = []
    for e in examples:
        ctx = tuple(e.context)[len(e.context) - keep:] if keep else ()
        out.append(render(tokenizer, e.instruction, ctx, e.persona, e.response, None, e.memory))
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def _sum_logprobs(logits, targets, labels_rows: list[list[int]]) -> list[ReplyScore]:
    """``logits[b, t]`` predicts ``targets[b, t]``; sum over positions whose label is set."""
    import torch

    logits = logits.float()
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = []
    for b, labels in enumerate(labels_rows):
        mask = torch.tensor([y != IGNORE_INDEX for y in labels], dtype=torch.bool)
        out.append(ReplyScore(float(lp[b, : len(labels)][mask].sum()), int(mask.sum())))
    return out


def score_group(model, tokenizer, renders: Sequence[Rendered]) -> list[ReplyScore]:
    """Score rendered examples; their common prompt is run once (``_score_full`` is the one-by-one twin)."""
    import torch

    from pipeline.training.loss import supports_fast_loss

    p = min(_common_prefix([r.input_ids for r in renders]), *(r.reply_start for r in renders))
    dev = model.device
    tails = [r.input_ids[p:] for r in renders]
    width = max(len(t) for t in tails)
    # right padding after the last real token cannot change earlier positions (causal attention)
    ids = torch.full((len(renders), width), pad_id(tokenizer), dtype=torch.long)
    for b, t in enumerate(tails):
        ids[b, : len(t)] = torch.tensor(t)
    prefix = torch.tensor([renders[0].input_ids[:p]], device=dev)
    labels_rows = [r.labels[p:] for r in renders]
    with torch.inference_mode():
        if supports_fast_loss(model):
            return _score_tails(model, prefix, ids.to(dev), labels_rows)
        name = cache_name(model)
        head = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        cache = head[name]
        if len(renders) > 1:
            cache.batch_repeat_interleave(len(renders))
        body = model(input_ids=ids.to(dev), use_cache=True, **{name: cache})
        last = head.logits[:, -1:].expand(len(renders), 1, -1)
        logits = torch.cat([last, body.logits[:, :-1]], dim=1)  # position t predicts tails[t]
        return _sum_logprobs(logits.cpu(), ids, labels_rows)


def _score_tails(model, prefix, ids, labels_rows: list[list[int]]) -> list[ReplyScore]:
    """The shared prefix once through the decoder body, the tails as a batch on its repeated cache,
    and the output layer only where a label is, a block of rows at a time: the padding of the shorter
    tails and the last position never meet the (262k-column) vocabulary projection."""
    import torch

    from pipeline.training.loss import MAX_LOGITS, causal_lm, embed, project

    lm = causal_lm(model)
    decoder = lm.get_decoder()
    name = cache_name(decoder)
    head = decoder(inputs_embeds=embed(lm, prefix), use_cache=True)
    cache = head[name]
    n = ids.shape[0]
    if n > 1:
        cache.batch_repeat_interleave(n)
    body = decoder(inputs_embeds=embed(lm, ids), use_cache=True, **{name: cache})[0]
    hidden = torch.cat([head[0][:, -1:].expand(n, 1, -1), body[:, :-1]], dim=1)  # position t predicts ids[:, t]
    labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long, device=ids.device)
    for b, row in enumerate(labels_rows):
        labels[b, : len(row)] = torch.tensor(row)
    keep = labels != IGNORE_INDEX
    rows, targets, h = keep.nonzero()[:, 0], labels[keep], hidden[keep]
    lp = torch.empty(len(targets), dtype=torch.float32, device=ids.device)
    block = max(1, MAX_LOGITS // lm.get_output_embeddings().weight.shape[0])
    for i in range(0, len(targets), block):
        logits = project(lm, h[i:i + block]).float()
        lp[i:i + block] = logits.gather(-1, targets[i:i + block, None])[:, 0] - torch.logsumexp(logits, -1)
    sums = torch.zeros(n, dtype=torch.float32, device=ids.device).index_add_(0, rows, lp)
    counts = keep.sum(1)
    return [ReplyScore(float(sums[b]), int(counts[b])) for b in range(n)]


def _score_full(model, r: Rendered) -> ReplyScore:
    """One example, no cache: logits only from the token before the reply onwards."""
    import torch

    start = r.reply_start - 1
    with torch.inference_mode():
        ids = torch.tensor([r.input_ids], device=model.device)
        out = model(input_ids=ids, logits_to_keep=len(r.input_ids) - start)
        targets = torch.tensor([r.input_ids[start + 1:]])
        return _sum_logprobs(out.logits[:, :-1].cpu(), targets, [r.labels[start + 1:]])[0]


def score_examples(
    model, tokenizer, examples: Iterable[Example], max_length: int | None, progress=None,
) -> list[ReplyScore | None]:
    """Score each example on its own; None where instruction + reply do not fit ``max_length``."""
    out: list[ReplyScore | None] = []
    for e in examples:
        r = render(tokenizer, e.instruction, e.context, e.persona, e.response, max_length, e.memory)
        out.append(None if r is None else score_group(model, tokenizer, [r])[0])
        if progress is not None:
            progress.update(1)
    return out


def perplexity(scores: Iterable[ReplyScore | None]) -> float | None:
    """Token-weighted perplexity ``exp(-sum logprob / sum tokens)`` of the scored replies."""
    kept = [s for s in scores if s is not None]
    n = sum(s.tokens for s in kept)
    return math.exp(-sum(s.logprob for s in kept) / n) if n else None
