"""Seeded, batched replies in the held-out contexts, through the chat's own decoding.

Every reply goes through :func:`chatbot.decoding.generate`, over the decoding the chat engine calls:
the same sampling settings, the same candidate reranking, the same loop and echo rejection, so
the statistics measured here are those of the replies a user gets (with the backward model in the
reranking when the model holds it, as the chat does: :func:`chatbot.decoding.has_backward`). The same seed is set before
each system (base, few-shot, adapter) samples, so the side-by-side samples differ by the model,
not by the random draw order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from chatbot import decoding
from chatbot.decoding import Prompt, SamplingParams
from chatbot.routing import BASE_ADAPTER
from core.chat_format import render
from core.reply_shape import ReplyLimits, echo_sources
from pipeline.evaluation.scoring import Example, message_of


@dataclass(frozen=True)
class SamplingConfig:
    """How the evaluation samples: the chat's :class:`SamplingParams`, prompts per batch, seed."""

    params: SamplingParams = field(default_factory=SamplingParams)
    batch_size: int = 2  # prompts per batch; each holds params.candidates rows
    seed: int = 0


def example_prompt(tokenizer, e: Example, budget: int | None, limits: ReplyLimits,
                   backward: bool = False) -> Prompt | None:
    """The decoding prompt of one held-out example (None where it cannot fit). ``backward``: the model
    holds the backward adapter beside its own weights: the rows run without adapter, and the reranking
    scores the message (:func:`.scoring.message_of`) with the backward one."""
    r = render(tokenizer, e.instruction, e.context, e.persona, None, budget)
    if r is None:
        return None
    alone = render(tokenizer, e.instruction, (), e.persona, None, budget)
    msg = message_of(e) if backward else None
    return Prompt(r.input_ids, alone.input_ids if alone else r.input_ids[:1],
                  echo_sources((t.speaker == e.persona, t.text) for t in e.context), limits,
                  adapter=BASE_ADAPTER if backward else None, message=None if msg is None else (msg.speaker, msg.text))


def generate_replies(
    model, tokenizer, examples: Sequence[Example], max_length: int | None, cfg: SamplingConfig,
    progress=None, limits: ReplyLimits | None = None,
) -> list[str]:
    """One reply per example (its ``response`` is ignored); "" where the prompt cannot fit."""
    import torch

    new = cfg.params.max_new_tokens
    budget = None if max_length is None else max(max_length - new, 8)
    backward = decoding.has_backward(model)
    prompts = [example_prompt(tokenizer, e, budget, limits or ReplyLimits(), backward) for e in examples]
    out = [""] * len(examples)
    todo = [i for i, p in enumerate(prompts) if p is not None]
    torch.manual_seed(cfg.seed)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        for i, reply in zip(chunk, decoding.generate(model, tokenizer, [prompts[i] for i in chunk], cfg.params)):
            out[i] = reply.text
        if progress is not None:
            progress.update(len(chunk))
    return out
