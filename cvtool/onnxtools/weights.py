"""The first convolution's filters, read from an ONNX file's stored weights (no inference).

The first Conv node in the graph (ONNX nodes are stored in topological order) is the one that sees
the image. Its weight (O, I, kh, kw) is usually an initializer; half-precision and quantized
(DequantizeLinear, QLinearConv) weights are converted back to float32.

Note for exported cvtool models: the exporter folds BatchNorm into the convolution, so these are
the weights the ONNX graph actually applies, BatchNorm scale included.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from cvtool.errors import CvtoolError
from cvtool.onnxtools.model_file import load_onnx

__all__ = ["FilterError", "first_conv_weights"]


class FilterError(CvtoolError, ValueError):
    """The model has no convolution whose weights can be read; the message says why."""


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
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "model"
    else:
        proto, where = load_onnx(model), str(model)
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
