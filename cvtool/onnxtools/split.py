"""Split a classifier's graph at its last spatial feature map: a backbone and a head, for CAMs.

The split point is a tensor of shape (N, C, h, w) with h·w > 1 such that the logits depend on the
input only through it: cutting there leaves a head that reads nothing but that tensor and weights.
Automatically it is the *last* such tensor in graph order on the way to the logits — in a CNN
the input of the global pooling / flatten that ends the feature extractor (the last ReLU of
ResNet's layer4, the last max-pool of a VGG-style net, a DequantizeLinear output in a QDQ INT8
graph). Tensors that are not floating point (a QOperator graph's uint8 maps) are passed over:
zero would not mean "nothing" there.

The backbone is the whole graph with the split tensor as an extra output (one pass gives the
logits and the map); the head is the subgraph from that tensor to the logits, as a model of its
own whose input is the tensor. Both are built in memory; the file is not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from cvtool.errors import CvtoolError
from cvtool.onnxtools.layers import list_layers, resolve_layers, with_outputs
from cvtool.onnxtools.model_file import Dim, dims, graph_inputs

__all__ = ["FeatureMap", "SplitError", "SplitModels", "feature_maps", "find_split", "split_model"]

_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


class SplitError(CvtoolError, ValueError):
    """The graph has no usable spatial feature map (or not the one asked for); the message says why."""


@dataclass(frozen=True)
class FeatureMap:
    """A (N, C, h, w) tensor the graph can be split at."""

    tensor: str  # ONNX tensor name
    name: str  # what to call it: its PyTorch module path when the graph records one, else the tensor
    op: str  # the producing node's op type
    channels: int
    height: int
    width: int
    elem_type: int  # onnx.TensorProto data type (FLOAT, FLOAT16, …)

    @property
    def cells(self) -> int:
        return self.height * self.width

    @property
    def numpy_dtype(self) -> np.dtype:
        """The map's element type in numpy (float32, float16, …)."""
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def describe(self) -> str:
        """E.g. 'layer4.1.relu (tensor relu_16, 512×4×4)'."""
        shape = f"{self.channels}×{self.height}×{self.width}"
        return (
            f"{self.name} ({shape})"
            if self.name == self.tensor
            else f"{self.name} (tensor {self.tensor}, {shape})"
        )


@dataclass(frozen=True)
class SplitModels:
    """The split point, the backbone (full graph + the map as a second output) and the head."""

    point: FeatureMap
    backbone: onnx.ModelProto  # outputs: [logits, point.tensor]
    head: onnx.ModelProto  # input: point.tensor (batch as the graph's input), output: logits
    logits: str  # the logits tensor's name (the graph's first output)


def _skeleton(proto: onnx.ModelProto, hw: tuple[int, int]) -> onnx.ModelProto:
    """The graph without the values of its float weights (only their shapes), for fast shape
    inference, with the image input's height and width fixed where the graph leaves them dynamic.

    Integer initializers (shapes, axes) keep their values: shape inference reads them.
    """
    copy = onnx.ModelProto(ir_version=proto.ir_version)
    copy.opset_import.extend(proto.opset_import)
    copy.functions.extend(proto.functions)
    g = copy.graph
    g.node.extend(proto.graph.node)
    g.input.extend(proto.graph.input)
    g.output.extend(proto.graph.output)
    for t in proto.graph.initializer:
        if t.data_type in _FLOATS and len(t.dims) and int(np.prod(t.dims)) > 64:
            g.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        else:
            g.initializer.append(t)
    inputs = graph_inputs(copy)
    if len(inputs) == 1 and len(inputs[0].type.tensor_type.shape.dim) == 4:
        for d, size in zip(inputs[0].type.tensor_type.shape.dim[2:], hw, strict=True):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
                d.dim_value = size
    return copy


def _types(proto: onnx.ModelProto) -> dict[str, tuple[int, list[Dim]]]:
    """{tensor: (elem type, shape)} from ONNX shape inference (best effort: unknown ones are left out)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # shape inference is best effort; tensors it cannot type are not candidates
        inferred = proto
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type and t.HasField("shape"):
            out[vi.name] = (t.elem_type, dims(vi))
    return out


def _head_nodes(proto: onnx.ModelProto, tensor: str, output: str) -> list[onnx.NodeProto] | None:
    """The nodes that compute `output` from `tensor` and weights, in graph order; None when the
    output also depends on the graph input by another way (then `tensor` is not a cut)."""
    graph = proto.graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    inputs = {i.name for i in graph_inputs(proto)}
    needed: set[int] = set()
    stack = [output]
    seen = {tensor}
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in inputs:
            return None  # reached the image without passing through `tensor`
        if name not in producer:
            continue  # an initializer
        i = producer[name]
        if i not in needed:
            needed.add(i)
            stack.extend(graph.node[i].input)
    return [graph.node[i] for i in sorted(needed)]


def _ancestors(graph: onnx.GraphProto, output: str) -> set[str]:
    """Every tensor the output is computed from."""
    producer = {o: n for n in graph.node for o in n.output if o}
    seen: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in producer:
            stack.extend(producer[name].input)
    return seen


def _display_names(proto: onnx.ModelProto) -> dict[str, str]:
    """{tensor: a name for people}: the PyTorch module path where the graph records one.

    A DequantizeLinear output of a QDQ graph is named after the float tensor that was quantized
    (its module, else its tensor name), with "(dequantized)" after it.
    """
    names = {x.tensor: (x.modules[0] if x.modules else x.tensor) for x in list_layers(proto)}
    producer = {o: n for n in proto.graph.node for o in n.output if o}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.output and node.input[0] in producer:
            q = producer[node.input[0]]
            if q.op_type == "QuantizeLinear":
                source = q.input[0]
                names[node.output[0]] = f"{names.get(source, source)} (dequantized)"
    return names


def feature_maps(proto: onnx.ModelProto, input_hw: tuple[int, int]) -> list[FeatureMap]:
    """Every tensor the graph can be split at, in graph order (the last one is the automatic choice).

    `input_hw` is the model's input size (the card's), used where the graph leaves it dynamic.
    """
    graph = proto.graph
    if not graph.output:
        return []
    logits = graph.output[0].name
    skeleton = _skeleton(proto, input_hw)
    types = _types(skeleton)
    upstream = _ancestors(graph, logits)
    names: dict[str, str] | None = None
    out = []
    for node in graph.node:
        for t in node.output:
            if not t or t not in upstream or t == logits or t not in types:
                continue
            elem, shape = types[t]
            if elem not in _FLOATS or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
                continue
            c, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
            if h * w < 2 or _head_nodes(proto, t, logits) is None:
                continue
            names = names if names is not None else _display_names(skeleton)
            out.append(FeatureMap(t, names.get(t, t), node.op_type, c, h, w, elem))
    return out


def _choices(maps: Sequence[FeatureMap], last: int = 6) -> str:
    shown = [m.describe() for m in maps[-last:]]
    more = f"{len(maps) - last} earlier ones, then " if len(maps) > last else ""
    return more + "; ".join(shown)


def find_split(
    proto: onnx.ModelProto, input_hw: tuple[int, int], layer: str | None = None, path: str = "model"
) -> FeatureMap:
    """The feature map to split at: `layer` (module path, tensor or node name) or the last one.

    SplitError, naming the file and the candidates, when there is none or `layer` is not one.
    """
    maps = feature_maps(proto, input_hw)
    if layer is None:
        if not maps:
            raise SplitError(
                f"{path}: no spatial feature map on the way to the logits (no (N, C, h, w) tensor with "
                "more than one cell that the logits depend on alone); a CAM needs a convolutional model"
            )
        return maps[-1]
    try:
        tensor = resolve_layers(proto, [layer])[layer]
    except CvtoolError as e:  # ActivationError: no such layer
        raise SplitError(f"{path}: no layer named {layer!r}; feature maps: {_choices(maps) or 'none'}") from e
    for m in maps:
        if m.tensor == tensor:
            return m
    raise SplitError(
        f"{path}: --layer {layer} (tensor {tensor}) is not a floating-point (N, C, h, w) map with more than "
        f"one cell through which alone the logits are computed; feature maps: {_choices(maps) or 'none'}"
    )


def _head(proto: onnx.ModelProto, point: FeatureMap, logits: str) -> onnx.ModelProto:
    graph = proto.graph
    nodes = _head_nodes(proto, point.tensor, logits)
    assert nodes is not None  # feature_maps keeps only cuts
    used = {i for n in nodes for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    image = next(iter(graph_inputs(proto)), None)
    batch: Dim = "N"
    if image is not None and image.type.tensor_type.shape.dim:
        d0 = image.type.tensor_type.shape.dim[0]
        batch = int(d0.dim_value) if d0.HasField("dim_value") and d0.dim_value > 0 else "N"
    x = helper.make_tensor_value_info(
        point.tensor, point.elem_type, [batch, point.channels, point.height, point.width]
    )
    y = onnx.ValueInfoProto()
    y.CopyFrom(graph.output[0])
    head_graph = helper.make_graph(nodes, "head", [x], [y], inits)
    model = helper.make_model(head_graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


def split_model(
    proto: onnx.ModelProto, input_hw: tuple[int, int], layer: str | None = None, path: str = "model"
) -> SplitModels:
    """Find the split point (see `find_split`) and build the backbone and head models."""
    point = find_split(proto, input_hw, layer, path)
    logits = proto.graph.output[0].name
    backbone = with_outputs(proto, [point.tensor])
    # Only the logits and the map: any further outputs of the original graph are not needed.
    keep = [o for o in backbone.graph.output if o.name in (logits, point.tensor)]
    del backbone.graph.output[:]
    backbone.graph.output.extend(sorted(keep, key=lambda o: o.name != logits))
    return SplitModels(point, backbone, _head(proto, point, logits), logits)
