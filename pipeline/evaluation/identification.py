"""Persona identification on parallel data: rank the 17 style variants of a held-out reply.

For a held-out reply of a persona who speaks in style S, every style's version of
the same reply is scored in the same context (one shared-prefix pass, see
:func:`.scoring.score_group`); the model "identifies" the persona when S's version
has the highest score.

The score is the **mean log-prob per token** (reply tokens + EOT), not the sum: the
variants differ a lot in length (``키워.`` vs ``키우고있어!! 0_0``) and a sum
prefers the shortest variant whatever the style; the mean compares how natural
each variant's tokens are. Chance level is 1/(number of variants), usually 1/17.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from pipeline.evaluation.scoring import Example, render_group, score_group


@dataclass(frozen=True)
class IdItem:
    """One held-out reply: its context and every style's version of it."""

    example: Example  # instruction, context, persona (response ignored)
    variants: dict[str, str]  # style -> text
    truth: str  # the persona's style


@dataclass(frozen=True)
class Ranking:
    truth: str
    ranked: tuple[str, ...]  # styles, best first
    scores: dict[str, float]  # style -> mean log-prob per token

    @property
    def predicted(self) -> str:
        return self.ranked[0]

    @property
    def rank_of_truth(self) -> int:
        return self.ranked.index(self.truth) + 1


def rank_item(model, tokenizer, item: IdItem, max_length: int | None) -> Ranking | None:
    """Score every variant of ``item`` in its context; None if the variants cannot fit ``max_length``."""
    styles = list(item.variants)
    e = item.example
    examples = [Example(e.instruction, e.context, e.persona, item.variants[s]) for s in styles]
    renders = render_group(tokenizer, examples, max_length)
    if renders is None:
        return None
    scores = {s: r.mean for s, r in zip(styles, score_group(model, tokenizer, renders))}
    ranked = tuple(sorted(styles, key=lambda s: -scores[s]))
    return Ranking(item.truth, ranked, scores)


def summarize(rankings: Sequence[Ranking]) -> dict[str, object]:
    """Top-1 accuracy, mean rank of the true style, chance level and predicted-style counts."""
    n = len(rankings)
    if not n:
        return {"n": 0, "top1": None, "mean_rank": None, "chance": None, "predicted": {}}
    return {
        "n": n,
        "top1": sum(r.predicted == r.truth for r in rankings) / n,
        "mean_rank": sum(r.rank_of_truth for r in rankings) / n,
        "chance": sum(1 / len(r.ranked) for r in rankings) / n,
        "predicted": dict(Counter(r.predicted for r in rankings).most_common()),
    }


def confusion(rows: dict[str, Sequence[Ranking]], styles: Sequence[str]) -> list[list[float]]:
    """Row per persona (its rankings), column per style: share of items where that style ranked first."""
    out = []
    for rankings in rows.values():
        counts = Counter(r.predicted for r in rankings)
        n = max(len(rankings), 1)
        out.append([counts[s] / n for s in styles])
    return out
