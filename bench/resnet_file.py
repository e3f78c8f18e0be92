"""What several benchmarks share: a seeded random ResNet-18 exported by cvtool, and a test picture.

Imported by the bench scripts (run from this folder's parent as `python bench/<script>.py`, so
this folder is on sys.path). torch and torchvision are needed here, as in those scripts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resnet18(path: Path, num_classes: int = 1000):
    """torchvision's ResNet-18 with seeded random weights, exported with a card by cvtool's own
    exporter (dynamic batch, checked against PyTorch); returns (the network, its card)."""
    import torch
    from torchvision.models import resnet18

    from cvtool.contract import ModelCard
    from cvtool.export.onnx_export import export_onnx
    from cvtool.onnxtools.model_file import save_onnx

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=num_classes).eval()
    names = tuple(f"c{i}" for i in range(num_classes))
    card = ModelCard(class_names=names, input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    model, _ = export_onnx(net, card)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(model, path)
    return net, card


def smooth_picture(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A smooth synthetic 224² picture (a bright disc on a gradient), normalised: (3, 224, 224)."""
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    img = np.stack([xx, yy, 0.5 * (xx + yy)]) * 0.6
    img += 0.4 * (((xx - 0.55) ** 2 + (yy - 0.45) ** 2) < 0.05)
    return ((img - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]).astype(np.float32)
