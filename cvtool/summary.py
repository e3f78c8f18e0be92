"""A Keras-style model summary: layer, output shape, parameters, trainable, with totals.

For an .onnx file it works from the graph alone, without torch: `onnx.shape_inference` gives
each node's output shape and the float initializers a node consumes are its parameters. For a
cvtool checkpoint the network is rebuilt in PyTorch (cvtool.train.summary, imported only then).

An exported graph is not the PyTorch module: batch-norm folded into the preceding convolution
leaves one bias per channel instead of a scale, a shift and two running statistics, so the two
totals of the same model may differ by those.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from cvtool.errors import CvtoolError

__all__ = ["LayerRow", "Summary", "SummaryError", "summarize", "onnx_summary"]


class SummaryError(CvtoolError, ValueError):
    """The file cannot be summarised; the message names it and says why."""


@dataclass
class LayerRow:
    name: str
    kind: str  # module class (PyTorch) or op type (ONNX)
    output_shape: tuple[int | str, ...] | None  # None: not known (not run, or not inferred)
    params: int
    trainable: bool | None  # None: no parameters, or not known (ONNX)


@dataclass
class Summary:
    source: str
    input_shape: tuple[int | str, ...] | None
    rows: list[LayerRow] = field(default_factory=list)
    total: int = 0
    trainable: int | None = None  # None: an ONNX graph does not say
    notes: list[str] = field(default_factory=list)

    @property
    def non_trainable(self) -> int | None:
        return None if self.trainable is None else self.total - self.trainable


def summarize(path: str | os.PathLike) -> Summary:
    """Summary of an .onnx file (torch-free) or a cvtool checkpoint (needs torch)."""
    path = Path(path)
    if not path.is_file():
        raise SummaryError(f"{path}: file not found")
    if path.suffix.lower() == ".onnx":
        return onnx_summary(path)
    from cvtool.train.summary import checkpoint_summary  # torch: only for checkpoints

    return checkpoint_summary(path)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


def onnx_summary(path: str | os.PathLike) -> Summary:
    """One row per graph node; a node's parameters are the float initializers it is first to use.

    Integer initializers (shapes, indices) are not parameters. Quantized weights (int8) are, and
    are counted once, by element.
    """
    path = Path(path)
    try:
        # Weights stay on disk: their dims are in the header, that is all a summary needs.
        model = onnx.load(str(path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # protobuf DecodeError, shape inference errors, …
        raise SummaryError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
    graph = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in [*graph.value_info, *graph.output, *graph.input]}
    quantized = {
        n.input[0]
        for n in graph.node
        if n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear") and n.input
    }
    weights = {
        t.name: math.prod(t.dims) for t in graph.initializer if t.data_type in _FLOATS or t.name in quantized
    }
    init_names = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    summary = Summary(source=str(path), input_shape=_dims(real_inputs[0]) if real_inputs else None)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        own = [name for name in node.input if name in weights and name not in seen]
        seen.update(own)
        out = shapes.get(node.output[0]) if node.output else None
        n_params = sum(weights[name] for name in own)
        summary.rows.append(LayerRow(node.name or f"{node.op_type}_{i}", node.op_type, out, n_params, None))
    summary.total = sum(weights.values())
    unused = sum(v for k, v in weights.items() if k not in seen)
    if unused:
        summary.notes.append(f"{unused:,} parameters in initializers no top-level node reads (subgraphs)")
    if any(n.op_type == "Conv" for n in graph.node) and not any(
        n.op_type == "BatchNormalization" for n in graph.node
    ):
        summary.notes.append(
            "no BatchNormalization nodes: batch-norm, if the network had any, is folded into the convolutions"
        )
    summary.notes.append("an ONNX graph does not record which parameters were trainable")
    return summary
