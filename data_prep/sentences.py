"""Split long turns at sentence boundaries (kss) so each piece fits the length budget.

kss is slow to import (~5 s, 340 MB) and its default backend is slow, so it is
imported lazily, only when some turn is longer than ``max_chars``, with the
backend pinned to mecab (pecab only if mecab is missing; the backend used is
recorded) and ``num_workers=1`` (no process pool). kss has had bugs that dropped
characters: the sentences must join back to the text (ignoring whitespace),
otherwise the turn is kept whole and counted as ``kss_mismatch``.

A long turn is first cut where the boundary is certain (a line break, or
sentence punctuation followed by a space); kss runs only on pieces still over
the budget, which is where it earns its cost (Korean chat often has no
punctuation). The turn becomes several consecutive turns of the same speaker,
each made of whole sentences packed up to ``max_chars``; a single sentence
longer than the budget stays whole (counted as ``over_budget``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from data_prep.records import Conversation

Splitter = Callable[[str], list[str]]
_WS = re.compile(r"\s+")
_CERTAIN = re.compile(r"(?<=[.!?…])\s+|\n+")  # boundaries no sentence splitter would dispute


@dataclass(frozen=True)
class SentenceConfig:
    max_turn_chars: int = 300  # turns longer than this are split at sentence boundaries
    backend: str = "mecab"  # kss backend; falls back to pecab when mecab is not installed

    def validate(self) -> list[str]:
        problems = []
        if self.max_turn_chars < 20:
            problems.append("--max-turn-chars: must be at least 20")
        if self.backend not in ("mecab", "pecab"):
            problems.append("--kss-backend: must be mecab or pecab")
        return problems


@dataclass
class KssSplitter:
    """Calls ``kss.split_sentences`` with a pinned backend; imports kss on first use only."""

    backend: str = "mecab"
    used_backend: str | None = field(default=None, init=False)  # what actually ran (for stats)
    _split: Callable | None = field(default=None, init=False, repr=False)

    def __call__(self, text: str) -> list[str]:
        if self._split is None:
            self._load()
        return self._split(text, backend=self.used_backend, num_workers=1)

    def _load(self) -> None:
        import kss  # lazy: 5 s and 340 MB

        self.used_backend = self.backend
        if self.backend == "mecab":
            try:
                import mecab  # noqa: F401  (python-mecab-ko)
            except ImportError:
                self.used_backend = "pecab"
        self._split = kss.split_sentences


def joins_back(text: str, pieces: list[str]) -> bool:
    """True when ``pieces`` hold exactly the characters of ``text`` (whitespace ignored)."""
    return _WS.sub("", "".join(pieces)) == _WS.sub("", text)


def pack(sentences: list[tuple[str, str]], max_chars: int) -> list[str]:
    """Greedily join consecutive (sentence, separator-after) items into chunks of at most ``max_chars``.

    Each sentence is joined to the previous one with the previous one's own
    separator, so the line breaks between merged messages survive.
    """
    chunks: list[str] = []
    sep = ""
    for sentence, after in sentences:
        if chunks and len(chunks[-1]) + len(sep) + len(sentence) <= max_chars:
            chunks[-1] = f"{chunks[-1]}{sep}{sentence}"
        else:
            chunks.append(sentence)
        sep = after
    return chunks


def sentences_of(text: str, max_chars: int, splitter: Splitter, counts: Counter) -> list[tuple[str, str]]:
    """(sentence, separator after it) items: certain boundaries first, kss inside pieces still too long."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in [*_CERTAIN.finditer(text), None]:
        piece = text[pos:m.start() if m else len(text)]
        after = ("\n" if "\n" in m.group() else " ") if m else ""
        if len(piece) > max_chars:
            counts["kss_calls"] += 1
            subs = [x.strip() for x in splitter(piece) if x.strip()]
            out += [(x, " ") for x in subs[:-1]] + [(x, after) for x in subs[-1:]]
        elif piece.strip():
            out.append((piece.strip(), after))
        pos = m.end() if m else len(text)
    return out


def split_turn(text: str, max_chars: int, splitter: Splitter, counts: Counter) -> list[str]:
    """``text`` as chunks of whole sentences fitting ``max_chars`` (or whole, counted, when it cannot)."""
    if len(text) <= max_chars:
        return [text]
    counts["long_turns"] += 1
    sentences = sentences_of(text, max_chars, splitter, counts)
    if not joins_back(text, [x for x, _ in sentences]):
        counts["kss_mismatch"] += 1
        return [text]
    chunks = pack(sentences, max_chars)
    over = sum(len(c) > max_chars for c in chunks)
    if over:
        counts["over_budget"] += over
    return chunks


def split_long_turns(
    convs: list[Conversation], cfg: SentenceConfig, splitter: Splitter | None = None
) -> tuple[list[Conversation], Counter]:
    """Stage: long turns become consecutive same-speaker turns; kss loads only if one is long."""
    counts: Counter = Counter()
    out = []
    for conv in convs:
        if all(len(t.text) <= cfg.max_turn_chars for t in conv.turns):
            out.append(conv)
            continue
        if splitter is None:
            splitter = KssSplitter(cfg.backend)
        turns = [t.with_text(c) for t in conv.turns for c in split_turn(t.text, cfg.max_turn_chars, splitter, counts)]
        out.append(Conversation(conv.id, tuple(turns)))
    if isinstance(splitter, KssSplitter) and splitter.used_backend:
        counts[f"kss_backend_{splitter.used_backend}"] = 1  # which backend ran (machines differ)
    return out, counts
