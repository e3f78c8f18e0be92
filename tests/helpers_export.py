"""Models for the export-stage tests: tiny trained checkpoints and a "foreign" ONNX file.

Everything is generated (shapes images, seeded weights) and small, so each test file runs in
seconds on a 2-core CPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from conftest import CLASSES

from cvtool.contract import ModelCard
from cvtool.data import scan_image_folder
from cvtool.images import load_and_preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def shapes_card(channels: int = 3, size: int = 32, **kw) -> ModelCard:
    return ModelCard(
        class_names=CLASSES,
        channels=channels,
        input_size=(size, size),
        mean=(0.2,) * channels,
        std=(0.3,) * channels,
        **kw,
    )


def save_checkpoint_for(out: Path, net: torch.nn.Module, arch: str, card: ModelCard) -> Path:
    from cvtool.train.checkpoint import save_checkpoint

    return save_checkpoint(out, {"arch": arch, "card": card.to_dict(), "model": net.state_dict(), "epoch": 0})


def load_folder(root: Path, card: ModelCard) -> tuple[torch.Tensor, torch.Tensor]:
    """An ImageFolder tree through the shared preprocessing → (N, C, H, W) tensor, (N,) labels."""
    s = scan_image_folder(root, classes=card.class_names)
    x = np.stack([load_and_preprocess(p, card) for p in s.paths])
    return torch.from_numpy(x), torch.tensor(s.labels)


def fit(net: torch.nn.Module, params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3) -> None:
    """Full-batch Adam on cross-entropy, seeded; leaves `net` in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(params, lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()


def trained_checkpoint(
    out_dir: Path, train_dir: Path, arch: str = "simple_cnn", size: int = 16, steps: int = 25
) -> Path:
    """A small network trained on the shapes images (so its predictions have real margins).

    16×16 inputs keep the training to a few seconds on two cores.
    """
    from cvtool.train.models import create_model

    card = shapes_card(size=size, extra={"arch": arch})
    torch.manual_seed(0)
    net = create_model(arch, len(CLASSES), 3, (size, size))
    x, y = load_folder(train_dir, card)
    fit(net, net.parameters(), x, y, steps)
    return save_checkpoint_for(out_dir / f"{arch}_trained.pt", net, arch, card)


def foreign_resnet18(
    out_dir: Path, train_dir: Path, size: int = 64
) -> tuple[Path, torch.nn.Module, ModelCard]:
    """torchvision's resnet18 as another tool would ship it: plain torch.onnx.export, no card,
    a fixed batch of 1, an input called "pixel_values" and an output called whatever the exporter
    chose. Random backbone; the last layer is fitted on the shapes images so the three classes
    are really told apart. Returns (onnx path, the network, the card a user would supply).
    """
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).eval()
    card = ModelCard(
        class_names=CLASSES, channels=3, input_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    x, y = load_folder(train_dir, card)
    with torch.no_grad():
        feats = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)  # fmt: skip
    head = torch.nn.Linear(512, len(CLASSES))
    fit(head, head.parameters(), feats, y, steps=300, lr=1e-2)
    net.fc.load_state_dict(head.state_dict())
    path = out_dir / "resnet18_foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["pixel_values"]
        )
    return path, net, card


def torch_probs(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
