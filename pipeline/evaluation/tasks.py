"""What to evaluate for one adapter: its manifest, held-out pairs, few-shot prompt, parallel items.

Everything here is files and text (no torch): a :class:`PersonaTask` holds the
examples every system (base, few-shot, adapter) is scored and sampled on, so the
systems are compared on exactly the same replies.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.adapter_format import read_manifest
from core.errors import UserError
from core.reply_shape import ReplyLimits, measure_limits, read_limits
from data_prep.records import ContextTurn, Pair, read_pairs
from pipeline.evaluation.identification import IdItem
from pipeline.evaluation.parallel import REPO_ROOT, ParallelIndex, StyleMatch
from pipeline.evaluation.scoring import Example

DEFAULT_CHATBOT_CSV = REPO_ROOT.parent / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"
SHIPPED_GENERAL = Path(__file__).with_name("general_ko.txt")
MIN_STYLE_SHARE = 0.5  # a persona is "parallel data" when at least half its held-out replies match one style


@dataclass(frozen=True)
class PersonaTask:
    """One adapter and the examples it is evaluated on."""

    persona: str
    adapter: Path
    manifest: dict
    data: Path
    held_out: tuple[Example, ...]  # reply = the persona's real held-out reply
    real_replies: tuple[str, ...]  # every held-out reply of the persona (style reference)
    few_shot_instruction: str
    shots: tuple[str, ...]  # the train replies shown in the few-shot prompt
    id_items: tuple[IdItem, ...]
    style_match: StyleMatch | None
    limits: ReplyLimits = ReplyLimits()  # what the chat holds the persona's replies to (persona.yaml)

    @property
    def max_length(self) -> int | None:
        return self.manifest.get("max_length")

    def with_instruction(self, examples: Sequence[Example], instruction: str) -> list[Example]:
        return [Example(instruction, e.context, e.persona, e.response) for e in examples]


def persona_pairs(data: Path, split: str, persona: str) -> list[Pair]:
    """The persona's pairs of ``data/{split}.jsonl``; UserError when the file or the persona is missing."""
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"--data {data}: no {split}.jsonl (run python -m pipeline.prepare first)")
    pairs = [p for p in read_pairs(path) if p.persona == persona]
    if not pairs:
        raise UserError(f"--data {data}: {split}.jsonl has no pairs of persona {persona!r}")
    return pairs


def few_shot_instruction(instruction: str, persona: str, replies: Sequence[str]) -> str:
    """The persona instruction followed by real replies as examples (the in-context baseline)."""
    lines = "\n".join(f"- {r}" for r in replies)
    return f"{instruction}\n\n{persona}의 실제 말투 예시:\n{lines}" if replies else instruction


def pick_shots(train: Sequence[Pair], k: int, seed: int) -> list[str]:
    """``k`` distinct train replies, seeded; short ones first would bias the style, so no sorting."""
    replies = list(dict.fromkeys(p.response for p in train))
    return random.Random(seed).sample(replies, min(k, len(replies)))


def _example(p: Pair, instruction: str) -> Example:
    return Example(instruction, tuple(p.context), p.persona, p.response)


def id_items(pairs: Sequence[Pair], instruction: str, index: ParallelIndex, style: str) -> list[IdItem]:
    """Held-out pairs whose reply is a ``style`` cell of the TSV, with every variant of that row."""
    items = []
    for p in pairs:
        row = index.row_of(p.response, style)
        if row is not None and len(row) > 1:
            items.append(IdItem(_example(p, instruction), dict(row), style))
    return items


def build_task(adapter: Path, data: Path, index: ParallelIndex | None, max_examples: int, shots: int,
               seed: int) -> PersonaTask:
    """Read adapter + data and choose the held-out examples (seeded, at most ``max_examples``)."""
    m = read_manifest(adapter)  # UserError names the folder and the missing keys
    persona, instruction = m["persona"], m["instruction"]
    val = persona_pairs(data, "validation", persona)
    rng = random.Random(seed)
    chosen = rng.sample(val, min(max_examples, len(val)))
    match = index.detect_style(p.response for p in val) if index else None
    if match is not None and match.share < MIN_STYLE_SHARE:
        match = None
    items = id_items(val, instruction, index, match.style) if match else []
    items = rng.sample(items, min(max_examples, len(items)))
    train = persona_pairs(data, "train", persona)
    shot_replies = pick_shots(train, shots, seed)
    return PersonaTask(
        persona=persona, adapter=adapter, manifest=m, data=data,
        held_out=tuple(_example(p, instruction) for p in chosen),
        real_replies=tuple(p.response for p in val),
        few_shot_instruction=few_shot_instruction(instruction, persona, shot_replies),
        shots=tuple(shot_replies), id_items=tuple(items), style_match=match,
        limits=persona_limits(adapter, [p.response for p in train]),
    )


def persona_limits(adapter: Path, train_replies: Sequence[str]) -> ReplyLimits:
    """The limits the chat reads from the adapter's persona.yaml; for a card from before them,
    measured on the train replies (the chat falls back to the defaults there)."""
    limits = read_limits(adapter / "persona.yaml")
    if limits == ReplyLimits():
        limits = ReplyLimits.from_card(measure_limits(train_replies))
    return limits


def general_examples(path: Path | None, n: int, seed: int, persona: str, user: str) -> tuple[list[Example], str]:
    """General Korean replies not seen in training, for the forgetting check; returns (examples, source).

    Default: answers of ChatbotData.csv (with the question as the user's turn) when
    it exists, else the neutral sentences shipped in ``general_ko.txt``. Scored with
    an empty instruction: the question is "is Korean still Korean", not persona.
    """
    if path is None and DEFAULT_CHATBOT_CSV.is_file():
        path = DEFAULT_CHATBOT_CSV
    source = path or SHIPPED_GENERAL
    if source.suffix == ".csv":
        with open(source, encoding="utf-8", newline="") as f:
            rows = [(r.get("Q", ""), r.get("A", "")) for r in csv.DictReader(f)]
        rows = [(q.strip(), a.strip()) for q, a in rows if a and a.strip()]
        if not rows:
            raise UserError(f"--general {source}: no rows with an A column")
    else:
        lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines()]
        rows = [("", ln) for ln in lines if ln and not ln.startswith("#")]
        if not rows:
            raise UserError(f"--general {source}: no text lines")
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    ex = [Example("", (ContextTurn(user, q),) if q else (), persona, a) for q, a in rows]
    return ex, str(source)
