"""Hand-built ONNX classifiers for the evaluation tests: instant to make, no torch, known behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cvtool.contract import CARD_METADATA_KEY, ModelCard

OPSET = 18


def _save(graph: onnx.GraphProto, card: ModelCard, path: Path) -> Path:
    # IR version 10: what current ONNX Runtime releases load (onnx itself may write a newer one).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, card.to_json()
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io(channels: int, size: int, k: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])
    return x, y


def linear_model(
    path: Path,
    class_names: Sequence[str],
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
    scale: float = 0.05,
) -> Path:
    """logits = flatten(x) @ W.T + b with seeded random W: every class gets a probability."""
    rng = np.random.default_rng(seed)
    k, n = len(class_names), channels * size * size
    w = numpy_helper.from_array((rng.normal(0, scale, (k, n))).astype(np.float32), "fc.weight")
    b = numpy_helper.from_array(rng.normal(0, 0.5, k).astype(np.float32), "fc.bias")
    x, y = _io(channels, size, k)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc"),
    ]
    card = ModelCard(
        class_names=tuple(class_names),
        channels=channels,
        input_size=(size, size),
        resize="stretch",
        mean=(0.2,) * channels,
        std=(0.3,) * channels,
    )
    return _save(helper.make_graph(nodes, "linear", [x], [y], [w, b]), card, path)


def region_model(path: Path, region: tuple[int, int, int, int], size: int = 16, gain: float = 0.05) -> Path:
    """Two classes; logits = ±gain · (sum of the normalised pixels inside `region` (r0, r1, c0, c1)).

    Nothing outside the region reaches the output, so occluding it cannot change a probability.
    """
    r0, r1, c0, c1 = region
    mask = np.zeros((1, 1, size, size), np.float32)
    mask[..., r0:r1, c0:c1] = 1
    inits = [
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array([[gain, -gain]], np.float32), "head"),
    ]
    x, y = _io(1, size, 2)
    nodes = [
        helper.make_node("Mul", ["input", "mask"], ["masked"], name="mask_region"),
        helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=1, name="sum"),
        helper.make_node("Reshape", ["total", "shape"], ["column"], name="column"),
        helper.make_node("MatMul", ["column", "head"], ["logits"], name="head"),
    ]
    card = ModelCard(
        class_names=("bright", "dark"),
        channels=1,
        input_size=(size, size),
        resize="stretch",
        mean=(0.5,),
        std=(0.25,),
    )
    return _save(helper.make_graph(nodes, "region", [x], [y], inits), card, path)


def conv_model(
    path: Path,
    weight: np.ndarray,
    size: int = 12,
    second: np.ndarray | None = None,
    weight_mode: str = "float",
) -> Path:
    """input → [Identity] → Conv(weight, pad 1) → Relu → (Conv(second) → Relu) → GlobalAveragePool → logits.

    weight_mode: "float" (initializer), "fp16" (float16 initializer + Cast) or "int8"
    (DequantizeLinear of an int8 initializer, per output channel).
    """
    o, c = weight.shape[:2]
    inits = []
    nodes = [helper.make_node("Identity", ["input"], ["x0"], name="copy_input")]
    if weight_mode == "float":
        inits.append(numpy_helper.from_array(weight.astype(np.float32), "conv1.weight"))
        wname = "conv1.weight"
    elif weight_mode == "fp16":
        inits.append(numpy_helper.from_array(weight.astype(np.float16), "conv1.weight_fp16"))
        nodes.append(helper.make_node("Cast", ["conv1.weight_fp16"], ["conv1.weight"], to=TensorProto.FLOAT))
        wname = "conv1.weight"
    else:
        scale = (np.abs(weight).reshape(o, -1).max(axis=1) / 127).astype(np.float32)
        q = np.round(weight / scale[:, None, None, None]).astype(np.int8)
        inits += [
            numpy_helper.from_array(q, "conv1.weight_q"),
            numpy_helper.from_array(scale, "conv1.weight_scale"),
            numpy_helper.from_array(np.zeros(o, np.int8), "conv1.weight_zero"),
        ]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                ["conv1.weight_q", "conv1.weight_scale", "conv1.weight_zero"],
                ["conv1.weight"],
                axis=0,
            )
        )
        wname = "conv1.weight"
    nodes += [
        helper.make_node("Conv", ["x0", wname], ["conv1_out"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv1_out"], ["relu1"], name="relu1"),
    ]
    last, k = "relu1", o
    if second is not None:
        inits.append(numpy_helper.from_array(second.astype(np.float32), "conv2.weight"))
        nodes += [
            helper.make_node(
                "Conv", ["relu1", "conv2.weight"], ["conv2_out"], pads=[1, 1, 1, 1], name="conv2"
            ),
            helper.make_node("Relu", ["conv2_out"], ["relu2"], name="relu2"),
        ]
        last, k = "relu2", second.shape[0]
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["logits"], axis=1, name="flatten"),
    ]
    x, y = _io(c, size, k)
    card = ModelCard(
        class_names=tuple(f"k{i}" for i in range(k)),
        channels=c,
        input_size=(size, size),
        resize="stretch",
        mean=(0.5,) * c,
        std=(0.5,) * c,
    )
    return _save(helper.make_graph(nodes, "conv", [x], [y], inits), card, path)


def conv2d_reference(x: np.ndarray, w: np.ndarray, pad: int = 1) -> np.ndarray:
    """(C, H, W) * (O, C, kh, kw) → (O, H', W') cross-correlation with zero padding, as plain loops."""
    c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad), np.float64)
    xp[:, pad : pad + h, pad : pad + wd] = x
    out = np.zeros((o, h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1))
    for f in range(o):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[f, i, j] = (xp[:, i : i + kh, j : j + kw] * w[f]).sum()
    return out
