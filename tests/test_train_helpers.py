"""Shared helpers for the training tests: persona data from SmileStyle, tiny extended bases.

SmileStyle holds the same two-person dialogues in 17 styles; a persona data set
is built the way the prepare stage would write it: the persona (민수) speaks in
one style, the partner (지영) in the ``informal`` style, and every persona turn
becomes a pair with the turns before it as context.
Import the fixtures explicitly (``from tests.test_train_helpers import ...``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import smilestyle
from data_prep.records import ContextTurn, Pair

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMILESTYLE = SHARED_DATA / "smilestyle" / "smilestyle_dataset.tsv"
CHATBOT_CSV = SHARED_DATA / "chatbot_data" / "ChatbotData.csv"
PERSONA, PARTNER = "민수", "지영"
INSTRUCTION = "너는 민수야. 친구와 카톡하듯 짧고 친근하게 말해."


def smilestyle_dialogues() -> list[list[dict[str, str]]]:
    """Dialogues as lists of rows (style -> text); an empty row separates dialogues."""
    return smilestyle.load_dialogues(SMILESTYLE)


def persona_pairs(style: str = "chat", limit: int | None = None, context_turns: int = 4) -> list[Pair]:
    """Pairs where 민수 answers 지영: 민수 speaks ``style``, 지영 ``informal``; odd rows are 민수's."""
    pairs = []
    for d_i, rows in enumerate(smilestyle_dialogues()):
        turns = []
        for r_i, row in enumerate(rows):
            mine = r_i % 2 == 1
            text = row[style] if mine else row["informal"]
            if not text:
                continue
            if mine and turns:
                ctx = tuple(ContextTurn(s, t) for s, t in turns[-context_turns:])
                pairs.append(Pair(PERSONA, INSTRUCTION, ctx, text, f"d{d_i}", "smilestyle"))
            turns.append((PERSONA if mine else PARTNER, text))
    return pairs[:limit] if limit else pairs


def write_persona_data(out: Path, n_train: int = 48, n_val: int = 16, style: str = "chat") -> Path:
    """A prepare-stage output directory: train.jsonl, validation.jsonl, personas/민수.yaml."""
    pairs = persona_pairs(style, n_train + n_val)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", pairs[:n_train]), ("validation.jsonl", pairs[n_train:])):
        (out / name).write_text("".join(p.dumps() + "\n" for p in part), encoding="utf-8")
    (out / "personas").mkdir(exist_ok=True)
    (out / "personas" / f"{PERSONA}.yaml").write_text(f"name: {PERSONA}\ninstruction: {INSTRUCTION}\n",
                                                      encoding="utf-8")
    (out / "stats.json").write_text(json.dumps({"pairs": len(pairs)}), encoding="utf-8")
    return out


def extended(base_dir: Path, cache_dir: Path):
    """(model, tokenizer, manifest, path) of the extended base of a tiny model."""
    from core.models import load_extended
    from pipeline.extension import ensure_extended

    path = ensure_extended(str(base_dir), cache_dir)
    model, tok, manifest = load_extended(path)
    return model, tok, manifest, path


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory) -> Path:
    """One extended-base cache for all training tests."""
    return tmp_path_factory.mktemp("train-cache")


@pytest.fixture(scope="session")
def persona_data(tmp_path_factory) -> Path:
    return write_persona_data(tmp_path_factory.mktemp("persona-data"))


def test_persona_pairs_alternate_speakers():
    pairs = persona_pairs(limit=20)
    assert len(pairs) == 20
    assert all(p.persona == PERSONA and p.context and p.context[-1].speaker == PARTNER for p in pairs)
