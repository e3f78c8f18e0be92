"""The layers of an ONNX graph, and their outputs for an input, from the file alone.

An ONNX graph returns only its declared outputs, so the chosen intermediate tensors are added as
graph outputs (on an in-memory copy; the file is not touched) and the copy runs on ONNX Runtime.

Layers can be named three ways: the tensor name (`relu_1`), the node name (`node_relu_1`) or, for
graphs exported by torch.onnx, the PyTorch module path recorded in each node's metadata
(`features.2`, `layer1.0`): a module stands for the last node inside it, i.e. its output.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from cvtool.errors import CvtoolError
from cvtool.onnxtools.model_file import Dim, dims, load_onnx

__all__ = ["ActivationError", "Layer", "layer_outputs", "list_layers", "resolve_layers", "with_outputs"]

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # written by torch.onnx's dynamo exporter


class ActivationError(CvtoolError, ValueError):
    """A layer name does not exist or its output cannot be shown; the message says which."""


@dataclass(frozen=True)
class Layer:
    """One tensor a node produces, and what it can be called."""

    tensor: str  # the ONNX tensor name
    node: str  # the producing node's name
    op: str  # e.g. Conv, Relu
    modules: tuple[str, ...]  # PyTorch module paths naming this output (may be empty)
    shape: tuple[Dim, ...] | None  # None: unknown rank; entries None: unknown size


def _proto(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_onnx(model)


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


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[Dim, ...] | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is best effort; shapes are then shown as unknown
        inferred = proto
    return {
        vi.name: tuple(dims(vi)) if vi.type.tensor_type.HasField("shape") else None
        for vi in [*inferred.graph.value_info, *inferred.graph.output]
    }


def list_layers(model: str | os.PathLike | onnx.ModelProto) -> list[Layer]:
    """Every tensor a node computes, in graph order (constants and shape arithmetic left out)."""
    proto = _proto(model)
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


def resolve_layers(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
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


def with_outputs(proto: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model that also returns `tensors` (type and shape left to ONNX Runtime)."""
    copy = onnx.ModelProto.FromString(proto.SerializeToString())
    existing = {o.name for o in copy.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=t))
    return copy


def layer_outputs(
    model: str | os.PathLike | onnx.ModelProto,
    batch: np.ndarray,
    layers: Sequence[str],
    providers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run an (N, C, H, W) float32 batch and return {layer name: its output for the batch}."""
    proto = _proto(model)
    tensors = resolve_layers(proto, layers)
    wanted = list(dict.fromkeys(tensors.values()))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        with_outputs(proto, wanted).SerializeToString(),
        sess_options=opts,
        providers=list(providers or ["CPUExecutionProvider"]),
    )
    inp = session.get_inputs()[0]
    x = np.asarray(batch, dtype=np.float32)
    n = len(x)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > n else None
    if fixed:  # a model exported with a fixed batch size gets a zero-padded batch
        x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), np.float32)])
    values = dict(zip(wanted, session.run(wanted, {inp.name: x}), strict=True))
    return {name: np.asarray(values[t])[:n] for name, t in tensors.items()}
