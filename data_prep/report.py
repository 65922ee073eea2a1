"""What the prepare run did, for people: ``stats.json``, ``report.md`` and ``report.png``.

Only counts and already-pseudonymised names reach these files. matplotlib is
imported lazily with the Agg backend; a Korean-capable font is used when one is
installed, otherwise the chart labels speakers by rank (S1, S2...) and the
report's table gives the names, so no label is drawn as empty boxes.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from data_prep.pii_patterns import PLACEHOLDERS

SHOWN_AS = {"name": "친구N (speakers)", "person": "사람N (other people)"}  # kinds that get pseudonyms
KOREAN_FONTS = ("NanumGothic", "NanumBarunGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic",
                "AppleGothic", "Apple SD Gothic Neo", "UnDotum", "Baekmuk Gulim")


@dataclass(frozen=True)
class FileInfo:
    """What stats.json says about one input file (the parsed messages themselves are not kept)."""

    path: str
    format: str
    encoding: str
    lines: int
    messages: int
    line_kinds: dict[str, int]
    unparsed_lines: int
    unparsed_samples: tuple[tuple[int, str], ...]  # raw: scrubbed before anything shows them
    system_kinds: dict[str, int]  # system lines by kind (join, leave, invite...; see data_prep.formats)

    @classmethod
    def of(cls, pf, samples: int = 5) -> "FileInfo":
        """From a ``data_prep.formats.ParsedFile``, keeping the first ``samples`` unparsed lines."""
        return cls(str(pf.path), pf.format, pf.encoding, pf.lines, len(pf.messages), dict(pf.line_kinds),
                   len(pf.unparsed), tuple(pf.unparsed[:samples]), dict(pf.system_kinds))


def file_stats(f: FileInfo, clean: Callable[[str], str]) -> dict[str, Any]:
    """One ``files`` entry of stats.json; ``clean`` hides personal data in the path and sample lines."""
    assert sum(f.line_kinds.values()) == f.lines, f"{f.path}: line kinds do not add up"
    return {
        "path": clean(f.path), "format": f.format, "encoding": f.encoding, "lines": f.lines,
        "messages": f.messages, "unparsed_lines": f.unparsed_lines, "line_kinds": dict(f.line_kinds),
        "system_kinds": dict(f.system_kinds),
        "unparsed_samples": [{"line": n, "text": clean(raw)[:200]} for n, raw in f.unparsed_samples],
    }


def build_stats(files: list[dict], speakers: Counter, personas, kept_messages: int, *,
                dropped: Counter, **counts: Any) -> dict[str, Any]:
    """stats.json content; ``speakers`` already pseudonymised. Every parsed message is kept or dropped.

    ``system_lines``: the files' system lines by kind, summed.
    """
    total = sum(f["messages"] for f in files)
    assert total == sum(dropped.values()) + kept_messages, "a message went missing between stages"
    system: Counter = Counter()
    for f in files:
        system.update(f["system_kinds"])
    return {
        "files": files,
        "system_lines": dict(system.most_common()),
        "speakers": dict(speakers.most_common()),
        "personas": list(personas),
        "messages": {"parsed": total, "dropped": sum(dropped.values()), "kept": kept_messages},
        "dropped": dict(dropped),
        **{k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()},
    }


def write_stats(path: Path, stats: dict[str, Any]) -> None:
    path.write_text(json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _korean_font() -> str | None:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in KOREAN_FONTS if name in installed), None)


def draw_chart(path: Path, stats: dict[str, Any], reply_lengths: list[int]) -> bool:
    """Messages per speaker, reply lengths, dropped and redacted counts in one PNG; True if Korean font."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _korean_font()
    if font:
        plt.rcParams["font.family"] = font
    speakers = list(stats["speakers"].items())[:15]
    labels = [name if font else f"S{i}" for i, (name, _) in enumerate(speakers, 1)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0][0].barh(labels[::-1], [n for _, n in speakers][::-1], color="#4c72b0")
    axes[0][0].set_title("messages per speaker")
    import numpy as np  # matplotlib's own dependency; hist() walks a Python list element by element

    axes[0][1].hist(np.asarray(reply_lengths or [0]), bins=30, color="#55a868")
    axes[0][1].set_title("persona reply length (chars)")
    for ax, key, color in ((axes[1][0], "dropped", "#c44e52"), (axes[1][1], "redactions", "#8172b2")):
        items = sorted(stats[key].items(), key=lambda kv: -kv[1])
        ax.bar([k for k, _ in items] or ["none"], [v for _, v in items] or [0], color=color)
        ax.set_title(f"{key} (count)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return font is not None


def _table(rows: list[tuple], head: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["none"] + ["0"] * (len(head) - 1)) + " |")
    return "\n".join(lines)


def render_report(stats: dict[str, Any], chart_name: str, korean_font: bool) -> str:
    """Markdown summary: files, speakers, drops, redactions, conversations, pairs (counts only)."""
    speakers = list(stats["speakers"].items())
    out = ["# prepare report", "", f"![chart]({chart_name})", ""]
    if not korean_font:
        out += ["(No Korean font installed: the chart labels speakers S1, S2... in the order of the table below.)", ""]
    files = [(f["path"], f["format"], f["encoding"], f["lines"], f["messages"], f["unparsed_lines"])
             for f in stats["files"]]
    out += ["## Files", _table(files, ("file", "format", "encoding", "lines", "messages", "unparsed")), ""]
    rows = [(f"S{i}", n, c) for i, (n, c) in enumerate(speakers, 1)]
    out += ["## Speakers", _table(rows, ("", "speaker", "messages")), ""]
    out += ["## System lines (by kind)", _table(list(stats["system_lines"].items()), ("kind", "count")), ""]
    out += ["## Dropped (not speech)", _table(sorted(stats["dropped"].items()), ("reason", "count")), ""]
    redacted = [(k, SHOWN_AS.get(k, PLACEHOLDERS.get(k, "")), n) for k, n in sorted(stats["redactions"].items())]
    out += ["## Redacted", _table(redacted, ("kind", "replaced by", "count")), ""]
    out += ["## Cleaning", _table(sorted(stats["cleaning"].items()), ("what", "count")), ""]
    out += [f"Conversations: {stats['conversations']}", ""]
    pairs = [(p, c["train"], c["validation"]) for p, c in stats["pairs"].items()]
    out += ["## Pairs", _table(pairs, ("persona", "train", "validation")), ""]
    return "\n".join(out)


def write_report(directory: Path, stats: dict[str, Any], reply_lengths: list[int]) -> None:
    """``report.md`` + ``report.png`` in ``directory``."""
    korean = draw_chart(directory / "report.png", stats, reply_lengths)
    (directory / "report.md").write_text(render_report(stats, "report.png", korean), encoding="utf-8")
