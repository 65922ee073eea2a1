"""Instruction pairs: context turns -> the persona's turn; de-duplication; split by conversation.

Splitting happens on conversation ids (seeded), never on pairs: overlapping
context windows of one conversation would otherwise leak validation text into
training (docs/PITFALLS.md).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

from data_prep.records import ContextTurn, Conversation, Pair


@dataclass(frozen=True)
class PairConfig:
    context_turns: int = 8  # previous turns kept as context (any speakers)
    val_ratio: float = 0.1  # share of conversations held out for validation
    seed: int = 0  # seeds the conversation split

    def validate(self) -> list[str]:
        problems = []
        if self.context_turns < 1:
            problems.append("--context-turns: must be at least 1")
        if not 0.0 <= self.val_ratio < 1.0:
            problems.append("--val-ratio: must be in [0, 1)")
        return problems


def build_pairs(
    convs: list[Conversation], persona: str, instruction: str, context_turns: int,
    sources: Mapping[str, str] | None = None,
) -> list[Pair]:
    """Stage: one pair per persona turn that has at least one earlier turn in its conversation.

    ``sources`` maps a message's source path to the label written in ``Pair.source``
    (the file name may hold a person's name, so the caller passes a scrubbed one).
    """
    sources = sources or {}
    pairs = []
    for conv in convs:
        turns = conv.turns
        if not any(t.speaker == persona for t in turns[1:]):
            continue
        # one ContextTurn per turn, shared by every window that holds it (no per-pair churn)
        ctx_turns = [ContextTurn(t.speaker, t.text) for t in turns]
        for i in range(1, len(turns)):
            if turns[i].speaker == persona:
                src = turns[i].source
                ctx = tuple(ctx_turns[max(0, i - context_turns):i])
                pairs.append(Pair(persona, instruction, ctx, turns[i].text, conv.id, sources.get(src, src)))
    return pairs


def dedupe(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Stage: drop exact repeats of (persona, context, response); keeps the first. Returns (kept, removed)."""
    seen: set = set()
    kept = []
    for p in pairs:
        # a joined string hashes far faster than a tuple of dataclasses
        key = "\x1f".join((p.persona, p.response, *(f"{t.speaker}\x1e{t.text}" for t in p.context)))
        if key in seen:
            continue
        seen.add(key)
        kept.append(p)
    return kept, len(pairs) - len(kept)


def validation_conversations(conv_ids: list[str], val_ratio: float, seed: int) -> set[str]:
    """Seeded choice of held-out conversations; at least one when there are two or more and ratio > 0."""
    ids = sorted(set(conv_ids))
    if val_ratio <= 0 or len(ids) < 2:
        return set()
    random.Random(seed).shuffle(ids)
    n = min(len(ids) - 1, max(1, round(len(ids) * val_ratio)))
    return set(ids[:n])


def split_by_conversation(pairs: list[Pair], val_ratio: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Stage: (train, validation) with every conversation wholly on one side."""
    held = validation_conversations([p.conversation_id for p in pairs], val_ratio, seed)
    train = [p for p in pairs if p.conversation_id not in held]
    val = [p for p in pairs if p.conversation_id in held]
    return train, val


def count_by_persona(train: list[Pair], val: list[Pair]) -> dict[str, dict[str, int]]:
    """{persona: {"train": n, "validation": n}} for stats.json."""
    tr, va = Counter(p.persona for p in train), Counter(p.persona for p in val)
    return {name: {"train": tr[name], "validation": va[name]} for name in sorted(set(tr) | set(va))}
