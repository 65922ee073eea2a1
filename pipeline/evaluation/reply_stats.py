"""Statistics of generated replies: share of empty replies, echoes and loops, polite (존댓말) replies,
swearing the persona never does,
and length against the persona's real replies.

The definitions are the ones the chat's decoding rejects candidates with
(:mod:`core.reply_shape`), so "0 loops here" means what the chat enforces. The persona's
real replies are measured the same way as a reference: real people sometimes repeat a word, and
the share of real replies that the definitions flag is their false-alarm rate.

    from pipeline.evaluation.reply_stats import reply_stats
    reply_stats(replies, sources, limits, real_replies)   # one dict, JSON-able
"""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Sequence

from core.reply_shape import ReplyLimits, bubbles, echo_sources, foreign_swearing, is_echo, is_polite, loop_reason


def _share(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def reply_stats(replies: Sequence[str], sources: Sequence[Sequence[str]], limits: ReplyLimits,
                real: Sequence[str] = ()) -> dict[str, object]:
    """Shares of empty / echo / loop replies (by loop reason), lengths and bursts, vs ``real``.

    ``sources[i]``: what reply ``i`` must not copy (the message, the persona's previous reply).
    """
    loops = [loop_reason(r, limits) for r in replies]
    lengths = [len(r.strip()) for r in replies if r.strip()]
    real_lengths = [len(r.strip()) for r in real]
    out: dict[str, object] = {
        "n": len(replies),
        "empty": _share([not r.strip() for r in replies]),
        "echo": _share([is_echo(r, s) for r, s in zip(replies, sources)]),
        "loop": _share([x is not None for x in loops]),
        "loop_reasons": dict(Counter(x for x in loops if x)),
        "mean_chars": round(statistics.fmean(lengths), 1) if lengths else 0.0,
        "median_chars": statistics.median(lengths) if lengths else 0,
        "multi_line": _share([len(bubbles(r)) > 1 for r in replies]),
        "polite": _share([is_polite(r) for r in replies]),  # off-register when the persona writes 반말
        "profanity": _share([foreign_swearing(r, limits) for r in replies]),  # swearing the persona never does
    }
    if real:
        real_mean = statistics.fmean(real_lengths) if real_lengths else 0.0
        out.update(
            real_mean_chars=round(real_mean, 1), real_median_chars=statistics.median(real_lengths),
            length_ratio=round(float(out["mean_chars"]) / real_mean, 3) if real_mean else None,
            real_multi_line=_share([len(bubbles(r)) > 1 for r in real]),
            real_polite=_share([is_polite(r) for r in real]),
        )
    return out


def example_sources(contexts: Sequence[Sequence], persona: str) -> list[tuple[str, ...]]:
    """The echo sources of held-out examples (context turns with ``speaker`` and ``text``)."""
    return [echo_sources((t.speaker == persona, t.text) for t in ctx) for ctx in contexts]
