"""Feature maps of chosen layers, from the ONNX file alone.

An ONNX graph only returns its declared outputs, so the chosen intermediate tensors are added as
graph outputs with the `onnx` package and the edited graph is run once by ONNX Runtime.

Layers can be named three ways: the tensor name (`relu_1`), the node name (`node_relu_1`) or, for
graphs exported by torch.onnx, the PyTorch module path recorded in each node's metadata
(`features.2`, `layer1.0`): a module stands for the last node inside it, i.e. its output.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from cvtool.errors import CvtoolError
from cvtool.evaluate.plots import plot_mosaic, tile_mosaic

__all__ = [
    "ActivationError",
    "Layer",
    "activation_mosaic",
    "compute_activations",
    "list_layers",
    "plot_activations",
]

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # written by torch.onnx's dynamo exporter


class ActivationError(CvtoolError, ValueError):
    """A layer name does not exist or its output is not a feature map; the message says which."""


@dataclass(frozen=True)
class Layer:
    """One tensor a node produces, and what it can be called."""

    tensor: str  # the ONNX tensor name
    node: str  # the producing node's name
    op: str  # e.g. Conv, Relu
    modules: tuple[str, ...]  # PyTorch module paths naming this output (may be empty)
    shape: tuple[int | str | None, ...] | None  # None: unknown rank; entries None: unknown size


def _module(node: onnx.NodeProto) -> list[str]:
    """Enclosing module paths, outermost first (e.g. ['layer1', 'layer1.0', 'layer1.0.conv1'])."""
    for p in node.metadata_props:
        if p.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            # First entry is the root (''), last is the operator itself.
            return [s for s in scopes[1:-1] if s]
    return []


def _names(node: onnx.NodeProto, initializers: set[str]) -> list[str]:
    """Module paths for a node's output: its own scope, and for a Conv/Gemm whose weight is named
    `<module>.weight` that module too (BatchNorm folded into a conv keeps the BN's scope)."""
    names = _module(node)[-1:]
    if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
        for i in node.input[1:2]:
            if i in initializers and i.endswith(".weight"):
                names.insert(0, i[: -len(".weight")])
    return list(dict.fromkeys(names))


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is best effort; shapes are then shown as unknown
        inferred = proto
    out: dict[str, tuple | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            out[vi.name] = None
            continue
        out[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        )
    return out


def _load(path: str | os.PathLike) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ActivationError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # DecodeError and friends
        raise ActivationError(f"{path}: not a readable ONNX file ({e})") from e


def list_layers(model: str | os.PathLike | onnx.ModelProto) -> list[Layer]:
    """Every tensor a node computes, in graph order (constants and shape arithmetic left out)."""
    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    shapes = _shapes(proto)
    skip_ops = {"Constant", "Shape", "ConstantOfShape", "Size", "Range"}
    inits = {i.name for i in proto.graph.initializer}
    layers = []
    for node in proto.graph.node:
        if node.op_type in skip_ops:
            continue
        names = tuple(_names(node, inits))
        for t in node.output:
            if t:
                layers.append(Layer(t, node.name, node.op_type, names, shapes.get(t)))
    return layers


def _resolve(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
    """{requested name: tensor name}; a module resolves to the output of its last node."""
    by_tensor, by_node, by_module = {}, {}, {}
    inits = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        for t in node.output:
            if t:
                by_tensor[t] = t
        if node.output and node.output[0]:
            by_node[node.name] = node.output[0]
            for scope in [*_module(node), *_names(node, inits)]:
                by_module[scope] = node.output[0]  # later nodes overwrite: the module's output
    graph_input = {i.name for i in proto.graph.input}
    out = {}
    for name in names:
        tensor = by_tensor.get(name) or by_module.get(name) or by_node.get(name)
        if tensor is None and name in graph_input:
            tensor = name
        if tensor is None:
            raise ActivationError(f"no layer named {name!r} in the model; see --list-layers")
        out[name] = tensor
    return out


def compute_activations(
    model: str | os.PathLike | onnx.ModelProto,
    x: np.ndarray,
    layers: Sequence[str],
    providers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run one (C, H, W) float32 input and return {layer name: (channels, h, w) float32}.

    The graph is edited in memory (the file is not touched): the requested tensors are appended
    to its outputs, then the copy runs on ONNX Runtime.
    """
    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # a copy we may edit
    tensors = _resolve(proto, layers)
    existing = {o.name for o in proto.graph.output}
    for t in dict.fromkeys(tensors.values()):
        if t not in existing:
            # Type and shape are left for ONNX Runtime to work out.
            proto.graph.output.append(onnx.ValueInfoProto(name=t))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
    )
    inp = session.get_inputs()[0]
    batch = x[None].astype(np.float32)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 1 else None
    if fixed:  # a model exported with a fixed batch size gets a zero-padded batch
        batch = np.concatenate([batch, np.zeros((fixed - 1, *x.shape), np.float32)])
    wanted = list(dict.fromkeys(tensors.values()))
    values = dict(zip(wanted, session.run(wanted, {inp.name: batch}), strict=True))
    out = {}
    for name, t in tensors.items():
        a = np.asarray(values[t], dtype=np.float32)
        if a.ndim != 4:
            raise ActivationError(
                f"layer {name!r} ({t}) has shape {tuple(a.shape)}; "
                "only (N, C, H, W) feature maps can be shown"
            )
        out[name] = a[0]
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
