"""Small inputs for the predict tests: hand-built ONNX classifiers (no torch) and image folders."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cvtool.contract import CARD_METADATA_KEY, ModelCard


def linear_onnx(
    path: Path,
    class_names: Sequence[str],
    channels: int = 3,
    size: int = 16,
    seed: int = 0,
    card: dict | None = None,
) -> Path:
    """logits = flatten(x) @ W + b with seeded random W: every pixel matters, not flip-invariant."""
    rng = np.random.default_rng(seed)
    k, d = len(class_names), channels * size * size
    w = numpy_helper.from_array((rng.standard_normal((d, k)) * 0.05).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), "B")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "linear",
        [x],
        [y],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    fields = dict(
        class_names=list(class_names),
        channels=channels,
        input_size=(size, size),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
    fields.update(card or {})
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, ModelCard(**fields).to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def noise_image(rng: np.random.Generator, w: int = 24, h: int = 20, mode: str = "RGB") -> Image.Image:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def mirror_symmetric_image(rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy RGB image equal to its own horizontal mirror."""
    half = rng.integers(0, 256, (size, size // 2, 3), dtype=np.uint8)
    return Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1), "RGB")


def image_folder(root: Path, names: Sequence[str], seed: int = 0, ext: str = ".png") -> Path:
    """root/<name><ext> noise images (names may contain sub-folders)."""
    rng = np.random.default_rng(seed)
    for name in names:
        p = root / f"{name}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        noise_image(rng, int(rng.integers(16, 40)), int(rng.integers(16, 40))).save(p)
    return root


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def touch_files(root: Path, *names: str) -> Path:
    """root/<name> for each name, 1-byte placeholders (listing never opens the files)."""
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return root
