"""Seeded, batched sampling of replies through ``chat_format.render`` (prompt ends with ``<|bot|>``).

The same seed is set before each system (base, few-shot, adapter) samples, so the
side-by-side samples differ by the model, not by the random draw order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from core.chat_format import pad_id, render, stop_ids
from pipeline.evaluation.scoring import Example


@dataclass(frozen=True)
class SamplingConfig:
    """How replies are sampled for the style statistics and the side-by-side samples."""

    max_new_tokens: int = 40
    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    batch_size: int = 8
    seed: int = 0


def _left_pad(prompts: list[list[int]], pad: int):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def generate_replies(
    model, tokenizer, examples: Sequence[Example], max_length: int | None, cfg: SamplingConfig, progress=None,
) -> list[str]:
    """One sampled reply per example (its ``response`` is ignored); "" where the prompt cannot fit."""
    import torch

    budget = None if max_length is None else max(max_length - cfg.max_new_tokens, 8)
    rendered = [render(tokenizer, e.instruction, e.context, e.persona, None, budget) for e in examples]
    stops, pad = stop_ids(tokenizer), pad_id(tokenizer)
    out = [""] * len(examples)
    todo = [i for i, r in enumerate(rendered) if r is not None]
    torch.manual_seed(cfg.seed)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        ids, mask = _left_pad([rendered[i].input_ids for i in chunk], pad)
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=cfg.max_new_tokens, do_sample=True,
                temperature=cfg.temperature, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
                eos_token_id=stops, pad_token_id=pad,
            )
        for row, i in zip(gen[:, ids.shape[1]:].cpu(), chunk):
            out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if progress is not None:
            progress.update(len(chunk))
    return out
