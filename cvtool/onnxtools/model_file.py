"""Loading and saving ONNX files, and the shape of a classifier's input and output.

Errors name the file and the problem (`OnnxFileError`); saving is atomic (temporary file, then
rename), so a model file is never left half written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from cvtool.atomic import atomic_write_bytes
from cvtool.errors import CvtoolError

__all__ = ["Dim", "GraphIO", "OnnxFileError", "dims", "graph_inputs", "graph_io", "load_onnx", "save_onnx"]

# A tensor dimension: a fixed size, a symbolic name ("batch"), or None when unknown.
Dim = int | str | None


class OnnxFileError(CvtoolError, ValueError):
    """An ONNX file cannot be read, written or used as an image classifier."""


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (external data included); OnnxFileError names the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError for missing external data, …
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnnxFileError(f"{path}: not a readable ONNX model ({first})") from e


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write `model` atomically; returns the file size in bytes."""
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise OnnxFileError(f"{path}: model too large to save as one file ({e})") from e
    atomic_write_bytes(path, data)
    return len(data)


def dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    """A tensor's shape: fixed sizes, symbolic names, None where unknown (no shape: [])."""
    shape = value_info.type.tensor_type.shape
    out: list[Dim] = []
    for d in shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (IR < 4 files also list every initializer as an input)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


@dataclass(frozen=True)
class GraphIO:
    """A classifier's single image input (N, C, H, W) and first output (N, K)."""

    input_name: str
    input_shape: list[Dim]
    output_name: str
    output_shape: list[Dim]

    @staticmethod
    def _fixed(d: Dim) -> int | None:
        return d if isinstance(d, int) else None

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        return self._fixed(self.input_shape[0])

    @property
    def channels(self) -> int | None:
        return self._fixed(self.input_shape[1])

    @property
    def hw(self) -> tuple[int | None, int | None]:
        return self._fixed(self.input_shape[2]), self._fixed(self.input_shape[3])

    @property
    def num_outputs(self) -> int | None:
        return self._fixed(self.output_shape[-1]) if self.output_shape else None


def graph_io(model: onnx.ModelProto, path: str | os.PathLike = "model") -> GraphIO:
    """The image input and logits output; OnnxFileError when the graph is not an image classifier."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise OnnxFileError(f"{path}: the model has {len(inputs)} inputs {names}; expected one image")
    shape = dims(inputs[0])
    if len(shape) != 4:
        raise OnnxFileError(f"{path}: input {inputs[0].name!r} has shape {shape}; expected (N, C, H, W)")
    if not model.graph.output:
        raise OnnxFileError(f"{path}: the model has no outputs")
    out = model.graph.output[0]
    return GraphIO(inputs[0].name, shape, out.name, dims(out))
