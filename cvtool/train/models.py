"""Architecture registry behind `--arch`.

Every builder takes (num_classes, in_channels, input_size, **arch_kwargs) and returns an nn.Module
that maps (N, C, H, W) float32 to (N, num_classes) logits. Input channels and size come from the
data; the only arch kwarg is `dropout`, for the architectures that have dropout.

Each entry also names the network's *head* (the classifier the backbone feeds): it is what
`--freeze backbone` leaves trainable and what `--init-from` replaces for a new class set, and
the torchvision name its pretrained weights are listed under, where there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cvtool.train.config import TrainError

__all__ = ["ARCHS", "ArchSpec", "arch_names", "create_model", "head_module", "SMALL_INPUT"]

# Inputs whose longer side is at most this many pixels get the small-image variants (ResNet's
# 3×3 stride-1 stem without max-pool, AlexNet's 3×3 first conv, compact heads).
SMALL_INPUT = 64

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ArchSpec:
    builder: Builder
    description: str
    head: str  # attribute path of the classifier head, e.g. "fc" or "classifier"
    dropout: float | None = None  # default dropout; None: the arch has no dropout
    torchvision: str | None = None  # name in torchvision.models (pretrained weights)


ARCHS: dict[str, ArchSpec] = {}


def register(
    name: str, description: str, head: str, dropout: float | None = None, torchvision: str | None = None
) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        ARCHS[name] = ArchSpec(fn, description, head, dropout, torchvision)
        return fn

    return deco


def arch_names() -> list[str]:
    return sorted(ARCHS)


def create_model(
    arch: str, num_classes: int, in_channels: int, input_size: tuple[int, int], **arch_kwargs: Any
) -> nn.Module:
    """Build `arch` for the data's class count, channels and (height, width)."""
    if arch not in ARCHS:
        raise TrainError(f"unknown arch {arch!r}; choose one of {', '.join(arch_names())}")
    spec = ARCHS[arch]
    kwargs = {k: v for k, v in arch_kwargs.items() if v is not None}
    if "dropout" in kwargs and spec.dropout is None:
        raise TrainError(f"{arch} has no dropout layers; leave --dropout unset")
    if set(kwargs) - {"dropout"}:
        raise TrainError(f"unknown arch options {sorted(set(kwargs) - {'dropout'})} for {arch}")
    if spec.dropout is not None:
        kwargs.setdefault("dropout", spec.dropout)
    return spec.builder(num_classes, in_channels, tuple(input_size), **kwargs)


def head_module(model: nn.Module, arch: str) -> nn.Module:
    """The classifier head of a model built by create_model (DDP wrappers unwrapped)."""
    model = getattr(model, "module", model)
    return model.get_submodule(ARCHS[arch].head)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # bias=False: the batch-norm's shift makes a conv bias redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _check_min_size(arch: str, input_size: tuple[int, int], pools: int) -> tuple[int, int]:
    h, w = input_size
    fh, fw = h >> pools, w >> pools  # each 2×2 max-pool floors
    if fh < 1 or fw < 1:
        raise TrainError(f"{arch} needs inputs of at least {2**pools}×{2**pools}, got {h}×{w}")
    return fh, fw


# --- small networks written here ---------------------------------------------------------------


@register("mlp", "flatten → 512 → 256 → classes, ReLU and dropout (the MNIST baseline)", "7", 0.2)
def mlp(num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.2) -> nn.Module:
    n_in = in_channels * input_size[0] * input_size[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )


class ConvNet(nn.Module):
    """Convolutional `features` followed by a `classifier`; the shape of the small nets below."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SimpleCNN(ConvNet):
    """The course-work CNN: three conv-BN-ReLU-maxpool stages (32, 64, 128) and two FC layers.

    The first FC layer's size follows the input size, so the same recipe fits 28×28 and 64×64.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.3):
        fh, fw = _check_min_size("simple_cnn", input_size, 3)  # 28 → 14 → 7 → 3
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 64, 128):
            layers += [*_conv_bn(c, width), nn.MaxPool2d(2)]
            c = width
        classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * fh * fw, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )
        super().__init__(nn.Sequential(*layers), classifier)


@register(
    "simple_cnn", "3 × (conv3×3-BN-ReLU-maxpool) with 32/64/128 filters, FC 256, dropout", "classifier", 0.3
)
def simple_cnn(
    num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.3
) -> nn.Module:
    return SimpleCNN(num_classes, in_channels, input_size, dropout)


@register(
    "vgg_small",
    "VGG-style: 3 × (2 conv3×3-BN-ReLU, maxpool, dropout) 32/64/128, FC 256; dropout rising 0.1 → 0.5",
    "classifier",
    0.5,
)
def vgg_small(
    num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.5
) -> nn.Module:
    """The CIFAR-10 course net; `dropout` is the FC layer's rate, the blocks get 1/5, 2/5, 3/5 of it."""
    fh, fw = _check_min_size("vgg_small", input_size, 3)
    layers: list[nn.Module] = []
    c = in_channels
    for i, width in enumerate((32, 64, 128)):
        layers += [*_conv_bn(c, width), *_conv_bn(width, width), nn.MaxPool2d(2)]
        layers.append(nn.Dropout(dropout * (i + 1) / 5))
        c = width
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * fh * fw, 256),
        nn.BatchNorm1d(256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )
    return ConvNet(nn.Sequential(*layers), classifier)


@register(
    "cnn4",
    "4 conv3×3-BN-ReLU: 32 | maxpool | 64, 64 | maxpool | 128, FC 256, dropout (the Fashion-MNIST recipe)",
    "classifier",
    0.3,
)
def cnn4(num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.3) -> nn.Module:
    """A plain batch-norm CNN that is cheap at full resolution: one 32-filter conv before pooling."""
    fh, fw = _check_min_size("cnn4", input_size, 2)
    features = nn.Sequential(
        *_conv_bn(in_channels, 32),
        nn.MaxPool2d(2),
        *_conv_bn(32, 64),
        *_conv_bn(64, 64),
        nn.MaxPool2d(2),
        *_conv_bn(64, 128),
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(128 * fh * fw, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )
    return ConvNet(features, classifier)


# --- torchvision networks ----------------------------------------------------------------------


def _small(input_size: tuple[int, int]) -> bool:
    return max(input_size) <= SMALL_INPUT


def _fit_pools(features: nn.Sequential, side: int) -> None:
    """Replace the max-pools that would shrink the feature map below 1 px with Identity.

    Pools have no weights, so pretrained state dicts still load by the same names.
    """
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            if m.padding == "same":  # stride 1: the side is kept
                continue
            p = 0 if isinstance(m.padding, str) else m.padding[0]  # "valid": no padding
            side = (side + 2 * p - m.kernel_size[0]) // m.stride[0] + 1
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            if side < k:
                features[i] = nn.Identity()
            else:
                side = (side - k) // s + 1


def _compact_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The new head for small inputs: global average pool (done before), 512 hidden units."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, num_classes),
    )


def _kaiming_conv(c_in: int, c_out: int, k: int, stride: int, padding: int, bias: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _resnet(depth: int) -> Builder:
    def build(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
        from torchvision import models

        net = getattr(models, f"resnet{depth}")(num_classes=num_classes)
        if _small(input_size):
            # CIFAR-style stem: a 7×7/2 conv plus max-pool would leave a 32 px image at 8 px
            # before the first residual stage.
            net.conv1 = _kaiming_conv(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = _kaiming_conv(in_channels, 64, 7, 2, 3, bias=False)
        return net

    return build


register(
    "resnet18",
    "torchvision ResNet-18 (3×3 stride-1 stem, no max-pool for inputs ≤ 64 px)",
    "fc",
    torchvision="resnet18",
)(_resnet(18))
register(
    "resnet34",
    "torchvision ResNet-34 (3×3 stride-1 stem, no max-pool for inputs ≤ 64 px)",
    "fc",
    torchvision="resnet34",
)(_resnet(34))


@register(
    "alexnet",
    "torchvision AlexNet, new head (inputs ≤ 64 px: 3×3 first conv, pooled 512-unit head)",
    "classifier",
    0.5,
    torchvision="alexnet",
)
def alexnet(
    num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.5
) -> nn.Module:
    from torchvision import models

    net = models.alexnet(num_classes=num_classes, dropout=dropout)
    if _small(input_size):
        net.features[0] = _kaiming_conv(in_channels, 64, 3, 1, 1, bias=True)
        _fit_pools(net.features, min(input_size))
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = _compact_head(256, num_classes, dropout)
    elif in_channels != 3:
        net.features[0] = _kaiming_conv(in_channels, 64, 11, 4, 2, bias=True)
    return net


@register(
    "vgg16",
    "torchvision VGG-16, new head (inputs ≤ 64 px: pooled 512-unit head)",
    "classifier",
    0.5,
    torchvision="vgg16",
)
def vgg16(num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.5) -> nn.Module:
    from torchvision import models

    net = models.vgg16(num_classes=num_classes, dropout=dropout)
    if in_channels != 3:
        net.features[0] = _kaiming_conv(in_channels, 64, 3, 1, 1, bias=True)
    if _small(input_size):
        _fit_pools(net.features, min(input_size))
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = _compact_head(512, num_classes, dropout)
    return net
