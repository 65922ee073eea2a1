"""SmileStyle as parallel ground truth: the same reply written in 17 speaking styles.

A persona built from SmileStyle (one speaker per style, see ``data_prep.smilestyle``)
has held-out replies that are cells of the TSV. :class:`ParallelIndex` finds the row
of each reply, so the other 16 styles' versions of it can be ranked by a model:
the persona's own version should come first.

Matching keys go through the prepare stage's own ``normalize_text`` (NFC, capped
laughter runs) and ignore whitespace, because prepare may merge or re-split
messages; replies that still do not match are counted, never guessed.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from data_prep.normalize import normalize_text

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TSV = REPO_ROOT.parent / "shared" / "data" / "smilestyle" / "smilestyle_dataset.tsv"
_SPACE = re.compile(r"\s+")


def match_key(text: str) -> str:
    """How a reply is compared with a TSV cell: normalised as prepare does, whitespace removed."""
    return _SPACE.sub("", normalize_text(text))


@dataclass(frozen=True)
class StyleMatch:
    """Which style column a persona's replies come from, and how many of them matched it."""

    style: str
    matched: int
    total: int

    @property
    def share(self) -> float:
        return self.matched / self.total if self.total else 0.0


class ParallelIndex:
    """Rows of the SmileStyle TSV, indexed by the match key of every cell."""

    def __init__(self, styles: list[str], rows: list[dict[str, str]]):
        self.styles = styles
        self.rows = rows
        self._index: dict[tuple[str, str], int] = {}
        for i, row in enumerate(rows):
            for style, cell in row.items():
                self._index.setdefault((style, match_key(cell)), i)

    @classmethod
    def load(cls, path: str | Path) -> "ParallelIndex":
        """Read the TSV (header = style names); empty cells are left out of each row."""
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            styles = [s.strip() for s in next(reader)]
            rows = [{s: c.strip() for s, c in zip(styles, r) if c.strip()} for r in reader]
        return cls(styles, [r for r in rows if len(r) > 1])

    def row_of(self, text: str, style: str) -> dict[str, str] | None:
        """The row whose ``style`` cell is ``text`` (all its non-empty variants), or None."""
        i = self._index.get((style, match_key(text)))
        return None if i is None else self.rows[i]

    def detect_style(self, replies: Iterable[str]) -> StyleMatch | None:
        """The style column most of ``replies`` come from; None when no reply matches any cell."""
        replies = list(replies)
        votes: Counter[str] = Counter()
        for text in replies:
            key = match_key(text)
            votes.update(s for s in self.styles if (s, key) in self._index)
        if not votes:
            return None
        style, _ = votes.most_common(1)[0]
        matched = sum(1 for t in replies if self.row_of(t, style) is not None)
        return StyleMatch(style, matched, len(replies))
