"""curves.png: loss and accuracy per epoch, train vs validation, dashed lines where the LR dropped."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cvtool.atomic import atomic_write_bytes
from cvtool.evaluation.runs import lr_drops

__all__ = ["plot_curves"]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, schedule: str = "none") -> Path:
    """Two panels (loss, accuracy) over epochs; written atomically as PNG."""
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")  # no pyplot: no global state, no backend
    drops = lr_drops(rows, schedule)
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [float(r[f"train_{metric}"]) for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [float(r[f"val_{metric}"]) for r in rows], "o-", ms=3, label="validation")
        for i, e in enumerate(drops):
            ax.axvline(e, color="gray", linestyle="--", linewidth=1, label="LR drop" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
