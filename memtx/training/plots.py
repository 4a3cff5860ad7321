"""The loss curves a run folder holds at the end (``loss.png``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_losses(history: list[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Train and validation bits per token against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [
            (m["step"], m.get("bpc", m["loss"] / math.log(2)))
            for m in history
            if m.get("split") == split and "loss" in m
        ]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per token (bpc for bytes)")
    ax.set_title(title or "memtx training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
