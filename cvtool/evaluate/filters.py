"""First-layer filters read straight from an ONNX file's initializers (no inference, no torch).

The first Conv node in the graph (ONNX nodes are stored in topological order) is the one that sees
the image. Its weight (O, I, kh, kw) is usually an initializer; half-precision and quantized
(DequantizeLinear) weights are converted back to float32.

Note for exported cvtool models: the exporter folds BatchNorm into the convolution, so these are
the weights the ONNX graph actually applies, BatchNorm scale included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cvtool.errors import CvtoolError
from cvtool.evaluate.plots import plot_mosaic, tile_mosaic

__all__ = ["FilterError", "filter_mosaic", "filter_tiles", "first_conv_weights", "plot_filters"]


class FilterError(CvtoolError, ValueError):
    """The model has no convolution whose weights can be read; the message says why."""


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "model"
    path = Path(model)
    if not path.is_file():
        raise FilterError(f"{path}: model file not found")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as e:  # onnx raises DecodeError and others for files that are not ONNX
        raise FilterError(f"{path}: not a readable ONNX file ({e})") from e


def _constant(graph: onnx.GraphProto, name: str, where: str) -> np.ndarray:
    """The value of tensor `name` when it is a constant: initializer, Constant, or a Cast /
    DequantizeLinear / Identity of constants."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None:
        raise FilterError(f"{where}: the first convolution's weight {name!r} is not stored in the file")
    op = producer.op_type
    if op == "Constant":
        return numpy_helper.to_array(producer.attribute[0].t)
    if op in ("Cast", "Identity"):
        return _constant(graph, producer.input[0], where)
    if op == "DequantizeLinear":
        x = _constant(graph, producer.input[0], where).astype(np.float32)
        scale = _constant(graph, producer.input[1], where).astype(np.float32)
        zero = (
            _constant(graph, producer.input[2], where).astype(np.float32)
            if len(producer.input) > 2 and producer.input[2]
            else np.float32(0)
        )
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along `axis`
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if np.size(zero) > 1 else zero
        return (x - zero) * scale
    raise FilterError(
        f"{where}: the first convolution's weight {name!r} is computed by a {op} node at run time; "
        "only stored weights can be shown"
    )


def first_conv_weights(model: str | os.PathLike | onnx.ModelProto) -> tuple[str, np.ndarray]:
    """(weight name, (O, I, kh, kw) float32) of the graph's first Conv node."""
    proto, where = _load(model)
    conv = next((n for n in proto.graph.node if n.op_type in ("Conv", "QLinearConv")), None)
    if conv is None:
        raise FilterError(f"{where}: the graph has no Conv node")
    # QLinearConv: (x, x_scale, x_zp, w, w_scale, w_zp, …); Conv: (x, w, b).
    if conv.op_type == "QLinearConv":
        w = _constant(proto.graph, conv.input[3], where).astype(np.float32)
        scale = _constant(proto.graph, conv.input[4], where).astype(np.float32).reshape(-1, 1, 1, 1)
        zero = _constant(proto.graph, conv.input[5], where).astype(np.float32).reshape(-1, 1, 1, 1)
        return conv.input[3], (w - zero) * scale
    name = conv.input[1]
    w = _constant(proto.graph, name, where).astype(np.float32)
    if w.ndim != 4:
        raise FilterError(f"{where}: first Conv weight {name!r} has shape {w.shape}; expected (O, I, kh, kw)")
    return name, w


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
