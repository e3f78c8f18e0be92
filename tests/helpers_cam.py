"""A hand-built ONNX classifier that looks at one corner only, for the CAM and faithfulness tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers_evaluate import _io, _save
from onnx import helper, numpy_helper
from PIL import Image

from cvtool.contract import ModelCard

CORNER_CLASSES = ("corner", "other")


def corner_model(path: Path, size: int = 16, cells: int = 4, gain: float = 1.0) -> Path:
    """input (N, 1, size, size) → Conv 3×3 stride 2 (4 filters, positive weights) → Relu → (N, 4,
    size/2, size/2) → × mask keeping the top-left `cells`×`cells` cells → GlobalAveragePool → Gemm.

    logits = ±gain · (mean masked feature): bright pixels in the top-left corner (input rows and
    columns below 2·cells) raise p(corner); nothing else reaches the output.
    """
    half = size // 2
    mask = np.zeros((1, 1, half, half), np.float32)
    mask[..., :cells, :cells] = 1
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.uniform(0.2, 0.8, (4, 1, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv.bias"),
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(np.array([[gain] * 4, [-gain] * 4], np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(2, np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv.weight", "conv.bias"], ["conv"], strides=[2, 2], pads=[1] * 4, name="conv"
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "mask"], ["masked"], name="mask_corner"),
        helper.make_node("GlobalAveragePool", ["masked"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc"),
    ]
    x, y = _io(1, size, 2)
    card = ModelCard(
        class_names=CORNER_CLASSES,
        channels=1,
        input_size=(size, size),
        resize="stretch",
        mean=(0.0,),
        std=(1.0,),
    )
    return _save(helper.make_graph(nodes, "corner", [x], [y], inits), card, path)


def bright_image(path: Path, size: int = 16, seed: int = 0) -> Path:
    """A bright noisy gray image (every pixel well above the baseline 0)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(120, 256, (size, size), dtype=np.uint8), "L").save(path)
    return path
