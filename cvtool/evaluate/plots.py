"""Figures for evaluation, drawn with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cvtool.atomic import atomic_write_bytes  # noqa: E402

__all__ = ["plot_confusion_matrix"]


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Heat-map of `cm` (rows = true, columns = predicted), written atomically as PNG.

    Readable from 2 to ~100 classes: the figure grows with the class count, cell numbers are
    drawn only below 30 classes, and long tick labels are shortened and rotated.
    """
    k = len(class_names)
    values = cm.astype(np.float64)
    if normalize:
        rows = values.sum(axis=1, keepdims=True)
        values = np.divide(values, rows, out=np.zeros_like(values), where=rows != 0)
    side = min(max(5.0, 0.32 * k + 2.5), 36.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    labels = [n if len(n) <= 24 else n[:22] + "…" for n in class_names]
    fontsize = 10 if k <= 20 else max(4, int(10 - (k - 20) / 12))
    ax.set_xticks(range(k), labels, rotation=45 if k <= 30 else 90, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), labels, fontsize=fontsize)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title or ("Confusion matrix (row-normalized)" if normalize else "Confusion matrix"))
    if k < 30:
        top = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = f"{v:.2f}" if normalize else str(int(v))
                color = "white" if top and v > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize - 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
