"""Speaker attribution: which of N persona adapters explains a held-out reply best?

Given adapters for several speakers of the same chat, each held-out reply of each
speaker is scored by every adapter *as that adapter's persona would see it* (its own
instruction; its persona's turns rendered as the bot's), and attributed to the
adapter that scores it highest. Accuracy against chance 1/N, and a confusion matrix
(rows: true speaker; columns: the adapter chosen). This is persona fidelity on real
chats, where SmileStyle's parallel variants do not exist.

Two scores (both reported, :data:`SCORES`):

- ``logprob``: the adapter's log-prob of the reply. Every adapter scores the same
  reply tokens, so the sum and the mean per token choose the same adapter; with equal
  priors this is the Bayes choice of speaker when each adapter models its speaker.
  The primary score.
- ``gain``: the adapter's log-prob minus the base model's in the same prompt (the
  adapter's instruction and rendering): what training added, the PMI analogue. It
  removes what the persona card alone predicts, which is evidence too, so it is the
  control, not the default.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.evaluation.identification import Ranking, confusion, summarize
from pipeline.evaluation.scoring import Example, ReplyScore, score_examples

SCORES = ("logprob", "gain")
PRIMARY = "logprob"


def as_persona(examples: Sequence[Example], persona: str, instruction: str) -> list[Example]:
    """The same replies in the same contexts, rendered as if ``persona`` (prompted by ``instruction``) said them."""
    return [Example(instruction, e.context, persona, e.response) for e in examples]


def score_as(model, tokenizer, examples: Sequence[Example], persona: str, instruction: str,
             max_length: int | None, progress=None) -> list[ReplyScore | None]:
    """Every reply's score under ``model`` as ``persona``'s reply; None where it cannot fit ``max_length``."""
    return score_examples(model, tokenizer, as_persona(examples, persona, instruction), max_length,
                          progress)


def attribute(truths: Sequence[str], scores: Mapping[str, Sequence[ReplyScore | None]],
              reference: Mapping[str, Sequence[ReplyScore | None]] | None = None) -> list[Ranking]:
    """One ranking of the adapters (persona names) per reply, best first.

    ``scores[p][i]`` is adapter ``p``'s score of reply ``i``; with ``reference`` (the base model
    in each adapter's prompt) the ranking uses the gain ``scores - reference``. A reply that some
    adapter could not score is left out.
    """
    out = []
    for i, truth in enumerate(truths):
        row = {p: s[i] for p, s in scores.items()}
        ref = {p: r[i] for p, r in reference.items()} if reference is not None else {}
        if any(v is None for v in (*row.values(), *ref.values())):
            continue
        value = {p: s.logprob - (ref[p].logprob if ref else 0.0) for p, s in row.items()}  # type: ignore[union-attr]
        out.append(Ranking(truth, tuple(sorted(value, key=lambda p: -value[p])), value))
    return out


def results(truths: Sequence[str], scores: Mapping[str, Sequence[ReplyScore | None]],
            reference: Mapping[str, Sequence[ReplyScore | None]]) -> dict[str, object]:
    """eval.json's attribution block: accuracy, chance and confusion matrix under each score."""
    personas = list(scores)
    block: dict[str, object] = {"personas": personas, "primary": PRIMARY,
                                "n": {p: sum(t == p for t in truths) for p in personas}}
    for name, ref in (("logprob", None), ("gain", reference)):
        rankings = attribute(truths, scores, ref)
        s = summarize(rankings)
        rows = {p: [r for r in rankings if r.truth == p] for p in personas}
        block[name] = {"accuracy": s["top1"], "chance": s["chance"], "n": s["n"],
                       "matrix": [[round(x, 3) for x in row] for row in confusion(rows, personas)]}
    return block
