"""A Keras-style model summary of an ONNX file, from the graph alone (no torch, nothing run).

`onnx.shape_inference` gives each node's output shape; a node's parameters are the parameter
tensors (onnxtools.params: the rule `cvtool inspect` counts by) that it is first to read, so the
rows add up to inspect's total. The PyTorch side (cvtool.train.summary) fills the same `Summary`
for checkpoints.

An exported graph is not the PyTorch module: batch-norm folded into the preceding convolution
leaves one bias per channel instead of a scale, a shift and two running statistics, so the two
totals of the same model may differ by those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from cvtool.errors import CvtoolError
from cvtool.onnxtools.model_file import dims, graph_inputs, load_onnx
from cvtool.onnxtools.params import count_parameters, parameters

__all__ = ["LayerRow", "Summary", "SummaryError", "onnx_summary"]


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


def _shape(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...] | None:
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple("?" if d is None else d for d in dims(value_info))


def onnx_summary(path: str | os.PathLike) -> Summary:
    """One row per graph node; a node's parameters are the parameter tensors it is first to read
    (a Constant node owns its value). OnnxFileError when the file cannot be read."""
    path = Path(path)
    model = load_onnx(path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # shape inference errors on graphs it cannot follow
        raise SummaryError(f"{path}: shapes cannot be inferred ({str(e).splitlines()[0]})") from e
    graph = inferred.graph
    shapes = {vi.name: _shape(vi) for vi in [*graph.value_info, *graph.output, *graph.input]}
    weights = {p.name: p.size for p in parameters(model)}
    real_inputs = graph_inputs(inferred)
    summary = Summary(source=str(path), input_shape=_shape(real_inputs[0]) if real_inputs else None)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        reads = node.output[:1] if node.op_type == "Constant" else node.input
        own = [name for name in reads if name in weights and name not in seen]
        seen.update(own)
        out = shapes.get(node.output[0]) if node.output else None
        n_params = sum(weights[name] for name in own)
        summary.rows.append(LayerRow(node.name or f"{node.op_type}_{i}", node.op_type, out, n_params, None))
    summary.total = count_parameters(model)  # the same total as `cvtool inspect`
    unused = summary.total - sum(r.params for r in summary.rows)
    if unused:
        summary.notes.append(f"{unused:,} parameters in tensors no top-level node reads (subgraphs)")
    if any(n.op_type == "Conv" for n in graph.node) and not any(
        n.op_type == "BatchNormalization" for n in graph.node
    ):
        summary.notes.append(
            "no BatchNormalization nodes: batch-norm, if the network had any, is folded into the convolutions"
        )
    summary.notes.append("an ONNX graph does not record which parameters were trainable")
    return summary
