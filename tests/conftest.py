"""Shared fixtures: small generated datasets and tiny exported models (no downloads)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripes")


def shape_image(kind: str, rng: np.random.Generator, size: int = 32, mode: str = "RGB") -> Image.Image:
    """A noisy picture of a shape; the classes are easy to learn but not trivial."""
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    r = rng.integers(size // 6, size // 3)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    elif kind == "square":
        # A hollow frame: distinct from a disc even at low resolution.
        inside = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        mask = inside & ~((abs(xx - cx) < r - 3) & (abs(yy - cy) < r - 3))
    else:
        mask = (xx // 3) % 2 == 0
    base = rng.normal(40, 15, (size, size))
    gray = np.clip(base + 170 * mask, 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(gray, "L")
    tint = rng.uniform(0.6, 1.0, 3)
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def make_image_folder(root: Path, per_class: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(c, rng, mode=mode).save(root / c / f"{i}.png")
    return root


def make_flat_test(root: Path, per_class: int, seed: int = 1, mode: str = "RGB") -> tuple[Path, Path]:
    """Flat folder of <id>.png (ids shuffled) plus an id,label CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = [c for c in CLASSES for _ in range(per_class)]
    ids = rng.permutation(len(items)) + 1
    labels = root.parent / f"{root.name}_labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i, c in zip(ids, items, strict=True):
            shape_image(c, rng, mode=mode).save(root / f"{i}.png")
            w.writerow([int(i), c])
    return root, labels


@pytest.fixture(scope="session")
def shapes_train(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("shapes") / "train", per_class=40)


@pytest.fixture(scope="session")
def shapes_test(tmp_path_factory) -> tuple[Path, Path]:
    return make_flat_test(tmp_path_factory.mktemp("shapes_test") / "test", per_class=8)


def export_random_model(out_dir: Path, channels: int, size: int = 32, arch: str = "simple_cnn") -> Path:
    """A randomly initialised (seeded) model saved as a checkpoint and exported to ONNX."""
    import torch

    from cvtool.contract import ModelCard
    from cvtool.export.onnx_export import export_checkpoint
    from cvtool.train.checkpoint import save_checkpoint
    from cvtool.train.models import create_model

    torch.manual_seed(0)
    card = ModelCard(
        class_names=CLASSES,
        channels=channels,
        input_size=(size, size),
        resize="shorter_crop",
        crop_pct=0.875,
        mean=(0.2,) * channels,
        std=(0.3,) * channels,
        extra={"arch": arch},
    )
    net = create_model(arch, len(CLASSES), channels, (size, size)).eval()
    # Non-trivial BatchNorm statistics, so parity checks exercise them.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = save_checkpoint(
        out_dir / f"{arch}_{channels}ch.pt",
        {"arch": arch, "card": card.to_dict(), "model": net.state_dict(), "epoch": 0},
    )
    onnx_path = out_dir / f"{arch}_{channels}ch.onnx"
    export_checkpoint(ckpt, onnx_path)
    return onnx_path


@pytest.fixture(scope="session")
def rgb_model(tmp_path_factory) -> Path:
    return export_random_model(tmp_path_factory.mktemp("rgb_model"), channels=3)


@pytest.fixture(scope="session")
def gray_model(tmp_path_factory) -> Path:
    return export_random_model(tmp_path_factory.mktemp("gray_model"), channels=1)
