"""Style statistics of a set of replies, and one distance per statistic between two sets.

Pure functions on strings; no model. The statistics are what makes a Korean chat
persona recognisable: reply length, laughter (ㅋ, ㅎ), crying (ㅠ/ㅜ), emoji,
emoticons (``^^``, ``T_T``, ``(´･ω･`)``), punctuation habits, how sentences end
(-요, -다, -냐, -지, -오/소 ...) and lexical variety (distinct-n).

Distances: absolute difference for shares and distinct-n, relative difference for
the mean length, total variation distance for the ending distribution (0 = same,
1 = disjoint).
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Sequence

from data_prep.persona_card import sentence_ending

EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\U0001F000-\U0001F2FF\u2B50\u2B55]")
# ASCII and kaomoji emoticons: ^^, ^_^, >_<, ><, T_T, ;;, -_-, :), :D, o_o, 0_0 and (...) faces
EMOTICON = re.compile(
    r"\^\^+|\^[_o0ωㅁ▽]\^|>_?<|T_?T|ㅜ_ㅜ|ㅠ_ㅠ|;;+|-_-|[:;]-?[)(DPp]|\b[oO0]_[oO0]\b|ㅡㅡ"
    r"|[(（][^가-힣\sA-Za-z0-9()（）]{1,10}[)）]"
)
MARKS = {"laugh_k": "ㅋ", "laugh_h": "ㅎ", "cry": "ㅠㅜ"}
# last syllable of a sentence -> ending class (what register/mood it signals)
ENDING_CLASSES = {
    "요": "-요", "다": "-다", "냐": "-냐/니", "니": "-냐/니", "지": "-지", "죠": "-요", "네": "-네",
    "오": "-오/소", "소": "-오/소", "어": "-어/아", "아": "-어/아", "야": "-어/아", "해": "-어/아",
    "가": "-가/나", "나": "-가/나", "게": "-게/래", "래": "-게/래", "자": "-자", "까": "-까",
}
ENDINGS = sorted(set(ENDING_CLASSES.values())) + ["other"]
_SENTENCES = re.compile(r"[.!?\n…~]+")


def share(replies: Sequence[str], pattern) -> float:
    """Share of replies in which ``pattern`` (regex or set of characters) occurs."""
    if not replies:
        return 0.0
    hit = pattern.search if hasattr(pattern, "search") else (lambda t: any(c in t for c in pattern))
    return sum(1 for t in replies if hit(t)) / len(replies)


def ending_distribution(replies: Sequence[str]) -> dict[str, float]:
    """Share of each ending class over every sentence that ends in a Hangul syllable."""
    counts = Counter(
        ENDING_CLASSES.get(e, "other")
        for t in replies for s in _SENTENCES.split(t) if (e := sentence_ending(s))
    )
    n = sum(counts.values())
    return {k: (counts[k] / n if n else 0.0) for k in ENDINGS}


def distinct_n(replies: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over the set (0 when there are none)."""
    grams = [tuple(w[i:i + n]) for t in replies for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def style_stats(replies: Sequence[str]) -> dict[str, object]:
    """Every statistic of a set of replies (scalars, plus ``endings`` as a distribution)."""
    stats: dict[str, object] = {
        "length": statistics.fmean(len(t) for t in replies) if replies else 0.0,
        **{k: share(replies, chars) for k, chars in MARKS.items()},
        "emoji": share(replies, EMOJI),
        "emoticon": share(replies, EMOTICON),
        "question": share(replies, "?？"),
        "exclamation": share(replies, "!！"),
        "ellipsis": share(replies, re.compile(r"\.\.|…")),
        "distinct_1": distinct_n(replies, 1),
        "distinct_2": distinct_n(replies, 2),
        "endings": ending_distribution(replies),
    }
    return stats


def distance(name: str, a: object, b: object) -> float:
    """The distance used for statistic ``name`` between values ``a`` (reference) and ``b``."""
    if name == "endings":
        keys = set(a) | set(b)  # type: ignore[arg-type]
        return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys)  # type: ignore[union-attr]
    if name == "length":
        return abs(float(b) - float(a)) / max(float(a), 1.0)
    return abs(float(b) - float(a))


def style_distances(reference: dict[str, object], other: dict[str, object]) -> dict[str, float]:
    """One distance per statistic from the reference statistics (the persona's real replies)."""
    return {k: round(distance(k, reference[k], other[k]), 4) for k in reference}


def mean_distance(distances: dict[str, float]) -> float:
    """One summary number: the mean of the per-statistic distances (all roughly in 0..1)."""
    return statistics.fmean(distances.values()) if distances else 0.0
