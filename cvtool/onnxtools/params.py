"""What counts as a parameter of an ONNX graph: the one rule `inspect` and `summary` share.

Parameters are the values of the graph's weight tensors (initializers and Constant nodes, in
subgraphs too): floating-point tensors, and 8/4-bit integer tensors (quantized weights) together
with the int32 biases that quantized ops consume. Shape and index tensors (int64 …) and
quantization scales and zero points are not parameters, so an INT8 file reports the same count
as the float32 file it came from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["Parameter", "count_parameters", "graphs", "parameter_counts", "parameters"]

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


@dataclass(frozen=True)
class Parameter:
    name: str  # the tensor's name: an initializer, or a Constant node's output
    dtype: str  # "float", "float16", "int8", …
    size: int  # number of values


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and, recursively, the subgraphs of its If/Loop/Scan nodes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graphs(g)


def _weights(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    for g in graphs(model.graph):
        for t in g.initializer:
            yield t.name, t
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        yield n.output[0], a.t


def parameters(model: onnx.ModelProto) -> list[Parameter]:
    """The graph's parameter tensors, in file order (see the module docstring for what counts)."""
    scale_or_zp: set[str] = set()
    quantized_inputs: set[str] = set()  # consumed by a quantized op: an int32 there is a bias
    for g in graphs(model.graph):
        for n in g.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                scale_or_zp.update(n.input[1:])
                quantized_inputs.add(n.input[0])
            elif n.op_type.startswith(_QOPS_PREFIX):
                scale_or_zp.update(i for i in n.input if i.endswith(("_scale", "_zero_point")))
                quantized_inputs.update(n.input)
    out = []
    for name, t in _weights(model):
        if name in scale_or_zp:
            continue
        dt = t.data_type
        if dt in _FLOAT or dt in _QUANT or (dt == TensorProto.INT32 and name in quantized_inputs):
            dtype = TensorProto.DataType.Name(dt).lower()
            out.append(Parameter(name, dtype, int(np.prod(t.dims, dtype=np.int64))))
    return out


def parameter_counts(model: onnx.ModelProto) -> Counter[str]:
    """dtype → number of parameter values."""
    counts: Counter[str] = Counter()
    for p in parameters(model):
        counts[p.dtype] += p.size
    return counts


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of weight values stored in the graph (see the module docstring)."""
    return sum(p.size for p in parameters(model))
