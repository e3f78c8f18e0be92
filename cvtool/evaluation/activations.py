"""Feature maps of chosen layers for one image: computed by `cvtool.onnxtools.layers`, drawn here.

Each layer's maps are shown as one grid (every channel on its own scale) and saved raw as .npy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.atomic import atomic_write
from cvtool.evaluation.outputs import safe_filename
from cvtool.evaluation.plots import plot_mosaic, tile_mosaic
from cvtool.onnxtools.layers import ActivationError, layer_outputs

__all__ = ["activation_mosaic", "compute_activations", "plot_activations", "save_activations"]


def compute_activations(
    model: str | os.PathLike,
    x: np.ndarray,
    layers: Sequence[str],
    providers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run one (C, H, W) float32 input and return {layer name: (channels, h, w) float32}."""
    out = {}
    for name, a in layer_outputs(model, x[None], layers, providers).items():
        if a.ndim != 4:
            raise ActivationError(
                f"layer {name!r} has shape {tuple(a.shape)}; only (N, C, H, W) feature maps can be shown"
            )
        out[name] = a[0].astype(np.float32)
    return out


def activation_mosaic(a: np.ndarray, max_channels: int = 64) -> np.ndarray:
    """(C, h, w) → mosaic of the first `max_channels` channels, each scaled to [0, 1] on its own
    (a channel that is constant, e.g. dead after ReLU, shows as 0)."""
    a = np.asarray(a, dtype=np.float32)[:max_channels]
    lo = a.min(axis=(1, 2), keepdims=True)
    span = a.max(axis=(1, 2), keepdims=True) - lo
    scaled = np.divide(a - lo, span, out=np.zeros_like(a), where=span > 0)
    return tile_mosaic(scaled, pad=1)


def plot_activations(
    a: np.ndarray, layer: str, path: str | os.PathLike, max_channels: int = 64, caption: str = ""
) -> Path:
    """Grid of a layer's feature maps (viridis; every channel on its own scale)."""
    c, h, w = a.shape
    shown = min(c, max_channels)
    title = f"{layer}: {c} channels of {h}×{w}" + (f", first {shown} shown" if shown < c else "")
    return plot_mosaic(
        [(activation_mosaic(a, max_channels), title)],
        path,
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        suptitle=caption,
        px_per_cell=float(np.clip(700 / ((w + 1) * np.ceil(np.sqrt(shown))), 2, 24)),
    )


def save_activations(
    acts: dict[str, np.ndarray], out_dir: str | os.PathLike, max_channels: int = 64, caption: str = ""
) -> dict[str, Path]:
    """Write <layer>.png (the grid) and <layer>.npy (the raw maps) per layer; returns {layer: png}."""
    out = Path(out_dir)
    written = {}
    for name, a in acts.items():
        stem = safe_filename(name)
        written[name] = plot_activations(a, name, out / f"{stem}.png", max_channels, caption=caption)
        with atomic_write(out / f"{stem}.npy", "wb") as f:
            np.save(f, a)
    return written
