"""What is inside an ONNX file: inputs, outputs, opsets, card, parameter count, operator histogram.

Works on any ONNX file, with or without a cvtool card; nothing is executed.

Parameters are counted by onnxtools.params, the rule `cvtool summary` uses too.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from cvtool.contract import CardError, ModelCard
from cvtool.onnxtools.card_edit import read_card
from cvtool.onnxtools.model_file import Dim, dims, graph_inputs, load_onnx
from cvtool.onnxtools.params import graphs, parameter_counts

__all__ = ["ModelInfo", "TensorInfo", "inspect_model", "op_histogram"]


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
    return TensorInfo(v.name, _dtype_name(v.type.tensor_type.elem_type), dims(v))


def op_histogram(model: onnx.ModelProto) -> Counter:
    """Node count per op type (non-default domains as "domain.Op"), subgraphs included."""
    ops: Counter = Counter()
    for g in graphs(model.graph):
        for n in g.node:
            ops[f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
    return ops


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
    params = parameter_counts(model)
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
