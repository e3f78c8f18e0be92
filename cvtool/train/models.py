"""Architecture registry behind `--arch`.

Every builder takes (num_classes, in_channels, input_size) and returns an nn.Module that maps
(N, C, H, W) float32 to (N, num_classes) logits. Input channels and size come from the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ARCHS", "create_model", "arch_names"]

Builder = Callable[[int, int, tuple[int, int]], nn.Module]
ARCHS: dict[str, tuple[Builder, str]] = {}


def register(name: str, description: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        ARCHS[name] = (fn, description)
        return fn

    return deco


def arch_names() -> list[str]:
    return sorted(ARCHS)


def create_model(arch: str, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(arch_names())}")
    return ARCHS[arch][0](num_classes, in_channels, tuple(input_size))


@register("mlp", "flatten → 512 → 256 → classes, ReLU and dropout (the MNIST baseline)")
def mlp(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    n_in = in_channels * input_size[0] * input_size[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(256, num_classes),
    )


class SimpleCNN(nn.Module):
    """The course-work CNN: three conv-BN-ReLU-maxpool stages (32, 64, 128) and two FC layers.

    The first FC layer's size follows the input size, so the same recipe fits 28×28 and 64×64.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 64, 128):
            layers += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        h, w = input_size
        # Each max-pool floors: 28 → 14 → 7 → 3.
        fh, fw = h // 8, w // 8
        if fh < 1 or fw < 1:
            raise ValueError(f"simple_cnn needs inputs of at least 8×8, got {h}×{w}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * fh * fw, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("simple_cnn", "3 × (conv3×3-BN-ReLU-maxpool) with 32/64/128 filters, FC 256, dropout")
def simple_cnn(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    return SimpleCNN(num_classes, in_channels, input_size)
