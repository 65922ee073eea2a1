"""PNG charts for eval.md: perplexity, style statistics, identification and attribution matrices (matplotlib, Agg).

Labels stay ASCII (no Hangul font is guaranteed on a user's machine): a persona
whose name is not ASCII is shown as P1, P2... in the order of eval.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

COLORS = {"real": "#999999", "base": "#c44e52", "few_shot": "#dd8452", "adapter": "#4c72b0"}
SCALAR_STATS = ("length", "laugh_k", "laugh_h", "cry", "emoji", "emoticon", "question", "exclamation",
                "ellipsis", "distinct_1", "distinct_2")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(name: str, i: int) -> str:
    """An ASCII chart label for persona ``name`` (its 1-based position ``i`` when not ASCII)."""
    return name if name.isascii() else f"P{i}"


def perplexity_chart(path: Path, name: str, r: dict[str, Any]) -> Path:
    """Bars: held-out and general-Korean perplexity per system (log scale)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (title, values) in zip(axes, (("held-out replies", r["perplexity"]),
                                          ("general Korean (forgetting)", r["forgetting"]["perplexity"]))):
        systems = [s for s, v in values.items() if v]
        ax.bar(systems, [values[s] for s in systems], color=[COLORS[s] for s in systems])
        ax.set_yscale("log")
        ax.set_title(f"{name}: {title}")
        ax.set_ylabel("perplexity (lower is better)")
    return _save(fig, path)


def style_chart(path: Path, name: str, r: dict[str, Any]) -> Path:
    """One small panel per statistic: real replies vs each system's sampled replies."""
    plt = _plt()
    systems = ["real"] + [s for s in r["style"] if s != "real"]
    fig, axes = plt.subplots(3, 4, figsize=(12, 7.5))
    for ax, stat in zip(axes.flat, SCALAR_STATS + ("endings",)):
        if stat == "endings":
            vals = [0.0] + [r["style_distance"][s]["endings"] for s in systems[1:]]
            ax.set_title("endings (TV distance)")
        else:
            vals = [r["style"][s][stat] for s in systems]
            ax.set_title(stat)
        ax.bar(range(len(systems)), vals, color=[COLORS[s] for s in systems])
        ax.set_xticks(range(len(systems)), [s.replace("_", "-") for s in systems], fontsize=7)
    fig.suptitle(f"{name}: style of sampled replies vs real replies")
    return _save(fig, path)


def identification_chart(path: Path, names: Sequence[str], results: Sequence[dict[str, Any]]) -> Path:
    """Top-1 accuracy per persona and system, with the chance level."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(names)), 3.6))
    systems = list(results[0]["identification"])
    width = 0.8 / len(systems)
    for j, s in enumerate(systems):
        ax.bar([i + j * width for i in range(len(names))], [r["identification"][s]["top1"] or 0 for r in results],
               width, label=s, color=COLORS[s])
    chance = results[0]["identification"][systems[0]]["chance"] or 0
    ax.axhline(chance, color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(names))], list(names))
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 identification")
    ax.legend(fontsize=7)
    return _save(fig, path)


def confusion_chart(path: Path, conf: dict[str, Any], system: str) -> Path:
    """Heatmap: persona rows x style columns, share of replies where that style ranked first."""
    rows = [f"{label(p, i)} ({t})" for i, (p, t) in enumerate(zip(conf["personas"], conf["truth"]), 1)]
    return heatmap(path, conf[system], rows, conf["styles"], f"identification: {system}",
                   ("style ranked first", "persona (style)"))


def attribution_chart(path: Path, block: dict[str, Any]) -> Path:
    """Heatmap: true speaker rows x chosen adapter columns (the primary score)."""
    names = [label(p, i) for i, p in enumerate(block["personas"], 1)]
    primary = block["primary"]
    return heatmap(path, block[primary]["matrix"], names, names,
                   f"attribution ({primary}): accuracy {block[primary]['accuracy'] or 0:.2f}",
                   ("adapter chosen", "true speaker"))


def heatmap(path: Path, matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str],
            title: str, axes: tuple[str, str]) -> Path:
    """Shares in [0, 1], one row per ``rows`` label and one column per ``cols`` label, values written in;
    ``axes`` = (x label, y label)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.55 * len(cols) + 2.5, 0.5 * len(rows) + 1.8))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols), rotation=60, fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.5 else "black")
    ax.set_title(title)
    ax.set_xlabel(axes[0], fontsize=8)
    ax.set_ylabel(axes[1], fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return path
