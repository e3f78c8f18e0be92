"""What is inside an ONNX file: inputs, outputs, opsets, card, parameter count, operator histogram.

Works on any ONNX file, with or without a cvtool card; nothing is executed.

Parameters are the values of the graph's weight tensors (initializers and Constant nodes): floating
point tensors, and 8/4-bit integer tensors (quantized weights) together with the int32 biases that
quantized ops consume. Shape and index tensors (int64 …) and quantization scales and zero points
are not parameters, so an INT8 file reports the same count as the float32 file it came from.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from cvtool.contract import CardError, ModelCard
from cvtool.onnxtools.card_edit import read_card
from cvtool.onnxtools.model_file import Dim, graph_inputs, load_onnx

__all__ = ["ModelInfo", "TensorInfo", "count_parameters", "inspect_model", "op_histogram"]

_FLOAT = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.BFLOAT16,
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ,
}
_QUANT = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}
# QOperator-format ops (ONNX's and ONNX Runtime's com.microsoft ones) carry their weights,
# scales and zero points as plain inputs; the quantizer names the latter *_scale / *_zero_point.
_QOPS_PREFIX = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger")


@dataclass
class TensorInfo:
    name: str
    dtype: str  # "float", "float16", "uint8", …
    shape: list[Dim]


@dataclass
class ModelInfo:
    """Everything `cvtool inspect` reports about one file."""

    path: str
    file_bytes: int
    ir_version: int
    opsets: dict[str, int]  # domain ("" = ai.onnx) → version
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    card: ModelCard | None
    card_error: str | None  # the card entry exists but is unusable: why
    parameters: int
    parameter_dtypes: dict[str, int]  # dtype → number of parameter values of that type
    nodes: int
    ops: dict[str, int] = field(default_factory=dict)  # op type → count, most frequent first

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["card"] = self.card.to_dict() if self.card is not None else None
        return d


def _dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _tensor_info(v: onnx.ValueInfoProto) -> TensorInfo:
    t = v.type.tensor_type
    dims: list[Dim] = []
    for d in t.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return TensorInfo(v.name, _dtype_name(t.elem_type), dims)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and, recursively, the subgraphs of its If/Loop/Scan nodes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def op_histogram(model: onnx.ModelProto) -> Counter:
    """Node count per op type (non-default domains as "domain.Op"), subgraphs included."""
    ops: Counter = Counter()
    for g in _graphs(model.graph):
        for n in g.node:
            ops[f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
    return ops


def _weights(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    for g in _graphs(model.graph):
        for t in g.initializer:
            yield t.name, t
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        yield n.output[0], a.t


def _parameter_counts(model: onnx.ModelProto) -> Counter:
    """dtype → number of parameter values (see the module docstring for what counts)."""
    scale_or_zp: set[str] = set()
    quantized_inputs: set[str] = set()  # consumed by a quantized op: an int32 there is a bias
    for g in _graphs(model.graph):
        for n in g.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                scale_or_zp.update(n.input[1:])
                quantized_inputs.add(n.input[0])
            elif n.op_type.startswith(_QOPS_PREFIX):
                scale_or_zp.update(i for i in n.input if i.endswith(("_scale", "_zero_point")))
                quantized_inputs.update(n.input)
    counts: Counter = Counter()
    for name, t in _weights(model):
        if name in scale_or_zp:
            continue
        dt = t.data_type
        if dt in _FLOAT or dt in _QUANT or (dt == TensorProto.INT32 and name in quantized_inputs):
            counts[_dtype_name(dt)] += int(np.prod(t.dims, dtype=np.int64))
    return counts


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of weight values stored in the graph (see the module docstring)."""
    return sum(_parameter_counts(model).values())


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Describe the ONNX file at `path`; raises OnnxFileError when it cannot be read."""
    path = Path(path)
    model = load_onnx(path)
    card, card_error = None, None
    try:
        card = read_card(model)
    except CardError as e:
        card_error = str(e)
    ops = op_histogram(model)
    params = _parameter_counts(model)
    return ModelInfo(
        path=str(path),
        file_bytes=path.stat().st_size,
        ir_version=int(model.ir_version),
        opsets={o.domain: int(o.version) for o in model.opset_import},
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        inputs=[_tensor_info(v) for v in graph_inputs(model)],
        outputs=[_tensor_info(v) for v in model.graph.output],
        card=card,
        card_error=card_error,
        parameters=sum(params.values()),
        parameter_dtypes=dict(params.most_common()),
        nodes=sum(ops.values()),
        ops=dict(ops.most_common()),
    )
