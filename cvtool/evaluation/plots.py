"""Figures for evaluation, drawn with matplotlib's non-interactive Agg backend.

Every function writes one PNG atomically and returns its path. Text drawn from class names goes
through `_short()`, so a 60-character name cannot push a figure out of shape.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402

from cvtool.atomic import atomic_write_bytes  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_image_grid",
    "plot_mosaic",
    "plot_reliability",
    "save_figure",
    "tile_mosaic",
]


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render `fig` to PNG in memory, write it atomically, close the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    # Inches: about 0.25 per class, so 100 classes still get ~25 px per cell at 110 dpi.
    side = min(max(5.0, 0.25 * k + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    vmax = 1.0 if normalize else max(float(values.max(initial=0)), 1.0)
    # Without cell numbers (30+ classes) a square-root colour scale keeps the few off-diagonal
    # counts visible next to a dark diagonal.
    norm = PowerNorm(0.5, vmin=0, vmax=vmax) if k >= 30 else Normalize(vmin=0, vmax=vmax)
    im = ax.imshow(values, cmap="Blues", norm=norm)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    labels = [_short(n) for n in class_names]
    fontsize = 10 if k <= 20 else max(6, int(10 - (k - 20) / 20))
    ax.set_xticks(range(k), labels, rotation=45 if k <= 30 else 90, ha="right", fontsize=fontsize)
    if k <= 30:
        # Anchor rotated labels at their end so they sit under their own column.
        plt.setp(ax.get_xticklabels(), rotation_mode="anchor")
    ax.set_yticks(range(k), labels, fontsize=fontsize)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    default = "Confusion matrix (row-normalized)" if normalize else "Confusion matrix"
    ax.set_title((title or default) + (", square-root colour scale" if k >= 30 else ""))
    if k < 30:
        top = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = f"{v:.2f}" if normalize else str(int(v))
                color = "white" if top and v > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=max(6, fontsize - 1))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(bins: dict[str, Any], ece: float, path: str | os.PathLike) -> Path:
    """Reliability diagram: accuracy against confidence per bin, and how many images each bin holds."""
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    count = np.asarray(bins["count"])
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in bins["confidence"]])
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(centers, np.nan_to_num(acc), width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    # The gap between accuracy and mean confidence is what ECE averages: hatched, above or
    # below the bar, so over- and under-confidence both read at a glance.
    ax.bar(
        centers,
        np.nan_to_num(np.abs(conf - acc)),
        bottom=np.nan_to_num(np.minimum(acc, conf)),
        width=width,
        facecolor="none",
        edgecolor="#c44e52",
        hatch="///",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.set_title(f"Reliability diagram ({len(count)} bins), ECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, count, width=width, edgecolor="black", color="#8c8c8c")
    if count.max(initial=0) > 0 and count.max() / max(count[count > 0].min(), 1) > 100:
        ax_n.set_yscale("log")  # most images usually sit in the top bin
    ax_n.set_xlabel("Confidence (top probability)")
    ax_n.set_ylabel("Images")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    suptitle: str = "",
    ncols: int | None = None,
    tile_inches: float = 2.2,
) -> Path:
    """Titled tiles of (H, W) gray or (H, W, 3) RGB uint8 images, e.g. the top-loss gallery."""
    n = len(images)
    ncols = ncols or max(1, min(6, math.ceil(math.sqrt(n))))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(tile_inches * ncols, (tile_inches + 0.55) * nrows + 0.4), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def tile_mosaic(
    tiles: np.ndarray, ncols: int | None = None, pad: int = 1, fill: float = np.nan
) -> np.ndarray:
    """(N, h, w) or (N, h, w, 3) → one mosaic array, tiles row-major with `pad` pixels of `fill`.

    Shape: (rows * (h + pad) - pad, cols * (w + pad) - pad[, 3]) with cols = ceil(sqrt(N)) by
    default and rows = ceil(N / cols); unused cells are `fill`.
    """
    tiles = np.asarray(tiles, dtype=np.float32)
    n, h, w = tiles.shape[:3]
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    shape = (nrows * (h + pad) - pad, ncols * (w + pad) - pad, *tiles.shape[3:])
    out = np.full(shape, fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tiles[i]
    return out


def plot_mosaic(
    panels: Sequence[tuple[np.ndarray, str]],
    path: str | os.PathLike,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    suptitle: str = "",
    px_per_cell: float = 4.0,
) -> Path:
    """One or more (mosaic, title) panels side by side; NaN cells (gaps) are drawn white.

    The figure is sized so each mosaic pixel is about `px_per_cell` screen pixels (at 110 dpi),
    clamped to a sensible page size.
    """
    dpi = 110
    widths = [m.shape[1] for m, _ in panels]
    height = max(m.shape[0] for m, _ in panels)
    scale = px_per_cell / dpi
    fig_w = min(max(sum(widths) * scale + 0.6 * len(panels), 4.0), 30.0)
    fig_h = min(max(height * scale + 0.9, 3.0), 30.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(fig_w, fig_h), squeeze=False, width_ratios=widths)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    for ax, (mosaic, title) in zip(axes.flat, panels, strict=True):
        if mosaic.ndim == 3:  # RGB in [0, 1]; gaps white
            mosaic = np.where(np.isnan(mosaic), 1.0, mosaic)
        ax.imshow(mosaic, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
