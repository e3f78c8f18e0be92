"""Training-time augmentation: presets and flags → a torchvision.transforms.v2 pipeline.

Training and evaluation transforms are defined side by side (as torchvision's reference presets
do). Both end in the card's shared preprocessing (`cvtool.images.preprocess`), so the values the
network sees in training are scaled and normalised exactly as in validation and predict:

    train: PIL image → geometry (random-resized crop, or the eval resize + crop) → affine
           (rotation, translation) → flip → colour jitter / random gray → preprocess
    eval:  PIL image → preprocess (resize + crop + normalise), the code predict runs
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torchvision.transforms import v2

from cvtool.contract import ModelCard
from cvtool.images import preprocess, resize_and_crop
from cvtool.train.config import TrainError

__all__ = ["Augment", "PRESETS", "resolve_augment", "TrainTransform", "EvalTransform"]


@dataclass(frozen=True)
class Augment:
    hflip: bool = False
    rotate: float = 0.0  # degrees, drawn uniformly in ±rotate
    translate: float = 0.0  # fraction of width/height, drawn uniformly in ±translate
    crop_scale: float | None = None  # random-resized-crop area fraction in [crop_scale, 1]
    jitter: float = 0.0  # brightness/contrast (and saturation for RGB) factors in 1 ± jitter
    random_gray: float = 0.0  # probability (RGB images only)

    @property
    def active(self) -> bool:
        return self != Augment()


PRESETS: dict[str, Augment] = {
    "none": Augment(),
    # Shifts and mirror images: safe for almost any photo or clothing dataset.
    "light": Augment(hflip=True, translate=0.1),
    # For small data sets that overfit fast; lighten it (or use `light`) once the model underfits.
    "heavy": Augment(hflip=True, rotate=15.0, translate=0.1, crop_scale=0.6, jitter=0.4, random_gray=0.1),
}


def resolve_augment(
    preset: str,
    hflip: bool | None = None,
    rotate: float | None = None,
    translate: float | None = None,
    crop_scale: float | None = None,
    jitter: float | None = None,
    random_gray: float | None = None,
) -> Augment:
    """A preset with the individually given flags (not None) taking precedence."""
    if preset not in PRESETS:
        raise TrainError(f"unknown --augment {preset!r}; choose one of {', '.join(PRESETS)}")
    given: dict[str, Any] = dict(
        hflip=hflip, rotate=rotate, translate=translate, crop_scale=crop_scale, jitter=jitter,
        random_gray=random_gray,
    )  # fmt: skip
    return dataclasses.replace(PRESETS[preset], **{k: v for k, v in given.items() if v is not None})


_INTERPOLATION = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "lanczos": v2.InterpolationMode.LANCZOS,
}


class EvalTransform:
    """PIL image → (C, H, W) float32: exactly the preprocessing predict and evaluate run."""

    def __init__(self, card: ModelCard):
        self.card = card

    def __call__(self, img: Image.Image) -> np.ndarray:
        return preprocess(img, self.card)


class TrainTransform:
    """PIL image (in the card's channels) → augmented, normalised (C, H, W) float32 array.

    Random draws come from torch's global RNG, as torchvision's transforms do; the dataset seeds
    it per sample and epoch, so augmentation is reproducible whatever the number of workers.
    """

    def __init__(self, card: ModelCard, aug: Augment):
        self.card, self.aug = card, aug
        # Once the image has the input size, `stretch` makes preprocess a pure normalisation.
        self._normalise = dataclasses.replace(card, resize="stretch")
        interp = _INTERPOLATION[card.interpolation]
        rgb = card.channels == 3
        steps: list[v2.Transform] = []
        if aug.crop_scale is not None:
            steps.append(
                v2.RandomResizedCrop(card.input_size, scale=(aug.crop_scale, 1.0), interpolation=interp)
            )
        if aug.rotate or aug.translate:
            # Uncovered corners get the training mean, which normalises to 0.
            fill = [round(m * 255) for m in card.mean]
            steps.append(
                v2.RandomAffine(
                    aug.rotate,
                    translate=(aug.translate, aug.translate) if aug.translate else None,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=fill if rgb else fill[0],
                )
            )
        if aug.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if aug.jitter:
            j = aug.jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j if rgb else None))
        if aug.random_gray and rgb:
            steps.append(v2.RandomGrayscale(aug.random_gray))  # keeps 3 channels
        self._steps = v2.Compose(steps) if steps else None

    def __call__(self, img: Image.Image) -> np.ndarray:
        if self.aug.crop_scale is None:
            img = resize_and_crop(img, self.card)  # the eval geometry
        if self._steps is not None:
            img = self._steps(img)
        return preprocess(img, self._normalise)
