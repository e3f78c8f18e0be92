"""Grids of the first convolution's filters (weights read by `cvtool.onnxtools.weights`).

One panel per model, side by side (e.g. before and after training), every filter on the layer's
one symmetric scale so filters keep their relative strength.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.evaluation.plots import plot_mosaic, tile_mosaic
from cvtool.onnxtools.weights import first_conv_weights

__all__ = ["filter_mosaic", "filter_tiles", "plot_filters"]


def filter_tiles(weights: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) → (O, kh, kw, 3) RGB tiles when I == 3, else (O, kh, kw) gray tiles (the mean
    over input channels when I is not 1), all in [0, 1] with 0.5 = zero weight.

    One symmetric scale for the whole layer (0.5 ± 0.5 · w / max|w|), so filters keep their
    relative strength: a dead filter stays flat grey.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.shape[1] != 3:
        w = w.mean(axis=1, keepdims=True)
    top = float(np.abs(w).max())
    scaled = 0.5 + 0.5 * w / top if top > 0 else np.full_like(w, 0.5)
    if scaled.shape[1] == 3:
        return scaled.transpose(0, 2, 3, 1)  # (O, kh, kw, 3)
    return scaled[:, 0]  # (O, kh, kw)


def filter_mosaic(weights: np.ndarray, pad: int = 1) -> np.ndarray:
    """All filters of a layer as one image: see `filter_tiles` and `tile_mosaic`."""
    return tile_mosaic(filter_tiles(weights), pad=pad)


def plot_filters(
    models: Sequence[str | os.PathLike], path: str | os.PathLike, titles: Sequence[str] | None = None
) -> tuple[Path, list[tuple[str, np.ndarray]]]:
    """One panel per model (e.g. before / after training), side by side; returns the PNG and the
    (weight name, weights) of each model."""
    found = [first_conv_weights(m) for m in models]
    panels = []
    for i, (m, (name, w)) in enumerate(zip(models, found, strict=True)):
        o, c, kh, kw = w.shape
        head = titles[i] if titles else Path(m).name
        panels.append(
            (filter_mosaic(w), f"{head}\n{name}: {o} filters {c}×{kh}×{kw}, max |w| {np.abs(w).max():.3g}")
        )
    widest = max(p.shape[1] for p, _ in panels)
    out = plot_mosaic(
        panels,
        path,
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        suptitle="First convolution filters (grey = 0; one scale per model)",
        # Small kernels are blown up so a 3×3 filter is visible; big layers stay on one page.
        px_per_cell=float(np.clip(420 / widest, 3, 40)),
    )
    return out, found
