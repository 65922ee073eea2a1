"""The loss-curve PNG written next to the adapter (matplotlib, headless Agg backend)."""
from __future__ import annotations

from pathlib import Path


def plot_loss(records: list[dict], path: Path, title: str = "") -> Path | None:
    """Training loss, validation loss (and rehearsal validation loss) against the step."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    reh = [(r["step"], r["rehearsal_val_loss"]) for r in records if r.get("rehearsal_val_loss") is not None]
    if not (train or val):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for series, label, style in ((train, "train", "-"), (val, "validation", "o-"), (reh, "rehearsal validation", "s--")):
        if series:
            ax.plot(*zip(*series), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss per supervised token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
