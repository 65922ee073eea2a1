"""Load the systems (base, few-shot, adapter) and run every measurement on one of them.

A *system* is a model plus the instruction it is prompted with:

- ``base``: the extended base model, the persona instruction (card) only;
- ``few_shot``: the same model, the instruction followed by k real train replies of
  the persona (in-context learning, no training): what prompting alone gets;
- ``adapter``: the base with the persona adapter, the instruction it was trained with.

The base still sees the chat special tokens, with the rows the extended base
initialised (it was never trained on them): that is the honest starting point of
fine-tuning. The LoRA adapter is merged into the weights for evaluation (same
numbers, and PEFT's unmerged token rows would rebuild the 262k-row embedding on
every forward).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from core.models import BACKWARD_ADAPTER, find_backward
from core.models import load_adapter as attach
from pipeline.evaluation.generation import SamplingConfig, generate_replies
from pipeline.evaluation.identification import IdItem, Ranking, rank_item
from pipeline.evaluation.scoring import Example, ReplyScore, score_examples
from pipeline.evaluation.tasks import PersonaTask
from pipeline.extension import load_base_for

log = logging.getLogger(__name__)
SYSTEMS = ("base", "few_shot", "adapter")


@dataclass(frozen=True)
class SystemOutput:
    """Every measurement of one system on one persona task."""

    heldout: list[ReplyScore | None]
    general: list[ReplyScore | None] | None  # None for few_shot: same weights as base
    rankings: list[Ranking]
    generated: list[str]


def load_adapter(task: PersonaTask, cache_dir: Path | None = None):
    """(model, tokenizer) with the task's LoRA adapter merged into a fresh copy of the extended base
    it was trained on."""
    base, tok, ext = load_base_for(task.manifest, cache_dir)
    want = task.manifest.get("extended_fingerprint")
    if want and ext.get("fingerprint") and want != ext["fingerprint"]:
        log.warning("%s was trained on extended base %s, evaluating on %s", task.adapter, want, ext["fingerprint"])
    return attach(base, task.adapter).merge_and_unload().eval(), tok


@contextmanager
def backward_attached(model, path: Path | None) -> Iterator:
    """``model`` with the backward model at ``path`` attached for the block (the PeftModel), then taken
    off again, ``model`` as it was; ``model`` itself where ``path`` is None."""
    if path is None:
        yield model
        return
    peft = attach(model, path, BACKWARD_ADAPTER).eval()
    try:
        yield peft
    finally:
        peft.unload()


def attach_backward(model, extended: Path):
    """``model`` (an extended base, adapters merged or none) with the backward model installed in the
    extended base folder ``extended`` attached, as a PeftModel whose active adapter it is (``model``'s
    layers change in place); None when that base has no backward model."""
    path = find_backward(extended)
    return None if path is None else attach(model, path, BACKWARD_ADAPTER).eval()


def instruction_for(task: PersonaTask, system: str) -> str:
    return task.few_shot_instruction if system == "few_shot" else task.manifest["instruction"]


def max_length_for(tok, task: PersonaTask, system: str) -> int | None:
    """The adapter's max_length; few-shot gets the shots' tokens on top, so the context kept is the same."""
    base = task.max_length
    if base is None or system != "few_shot":
        return base
    extra = len(tok(task.few_shot_instruction)["input_ids"]) - len(tok(task.manifest["instruction"])["input_ids"])
    return base + max(extra, 0)


def work_units(task: PersonaTask, general: Sequence[Example], generate: int) -> int:
    """How many progress steps one system takes on ``task`` (for the progress bar total)."""
    return len(task.held_out) + len(general) + len(task.id_items) + min(generate, len(task.held_out))


def run_system(
    model, tok, task: PersonaTask, system: str, general: Sequence[Example], sampling: SamplingConfig,
    generate: int, progress=None, backward: Path | None = None,
) -> SystemOutput:
    """Perplexity on held-out replies (+ general text), identification rankings, sampled replies (reranked
    with the backward model at ``backward`` too, where given, as the chat reranks)."""
    instruction = instruction_for(task, system)
    max_len = max_length_for(tok, task, system)
    heldout = score_examples(model, tok, task.with_instruction(task.held_out, instruction), max_len, progress)
    general_scores = None
    if system != "few_shot":
        general_scores = score_examples(model, tok, general, max_len, progress)
    elif progress is not None:
        progress.update(len(general))
    rankings = []
    for item in task.id_items:
        e = item.example
        moved = IdItem(Example(instruction, e.context, e.persona), item.variants, item.truth)
        r = rank_item(model, tok, moved, max_len)
        if r is not None:
            rankings.append(r)
        if progress is not None:
            progress.update(1)
    prompts = task.with_instruction(task.held_out[:generate], instruction)
    with backward_attached(model, backward if prompts else None) as reranking:  # the chat's reranking
        generated = generate_replies(reranking, tok, prompts, max_len, sampling, progress, task.limits)
    return SystemOutput(heldout, general_scores, rankings, generated)
