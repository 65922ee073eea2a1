"""ChatbotData (songys, MIT): Korean question/answer pairs, with one fixed held-out split.

The held-out split is the one every stage agrees on: the dialogue stage trains only on
``split="train"``, and next-reply selection on general Korean Q/A is measured only on
``split="heldout"``. Rows are assigned by a hash of the *answer* text, so near-duplicate
questions that share an answer ("3박4일 놀러가고 싶다" / "3박4일 정도 놀러가고 싶다") always
land on the same side and no held-out answer is ever trained on.

    from data_prep.chatbot_data import load_qa
    train = load_qa(split="train")      # about 90% of the rows
    heldout = load_qa(split="heldout")  # about 10%
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import UserError

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"
HELDOUT_BUCKETS = 10  # one bucket of this many is held out: about 10% of the answers
Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class QA:
    """One question (the user's turn) and its answer."""

    question: str
    answer: str
    label: int  # ChatbotData's topic label: 0 everyday, 1 break-up, 2 love


def is_heldout(answer: str) -> bool:
    """True when ``answer`` belongs to the held-out split (stable across machines and versions)."""
    return _bucket(answer.strip(), HELDOUT_BUCKETS) == 0


def hash_bucket(text: str, salt: str, n: int) -> int:
    """A bucket in ``range(n)`` from a hash of ``text`` (salted per use): the same on every machine and run."""
    return _bucket(f"{salt}\0{text}", n)


def _bucket(key: str, n: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def load_qa(path: str | Path = DEFAULT_CSV, split: Split = "all") -> list[QA]:
    """The Q/A rows of ``split`` in file order; a UserError when the file is missing or malformed."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"{path}: cannot read ChatbotData ({e.strerror or e})") from e
    if not rows or not {"Q", "A"} <= set(rows[0]):
        raise UserError(f"{path}: not ChatbotData (needs the columns Q and A)")
    out = []
    for row in rows:
        q, a = (row.get("Q") or "").strip(), (row.get("A") or "").strip()
        if not q or not a:
            continue
        if split == "all" or (split == "heldout") == is_heldout(a):
            out.append(QA(q, a, int(row.get("label") or 0)))
    return out
