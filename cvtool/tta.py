"""Test-time augmentation: several views of each image, whose probabilities are averaged.

- `none`: the card's preprocessing, one view.
- `flip`: that view and its horizontal mirror (2 views).
- `flip+crops`: the center view, the four corner crops of the same resized image, and the mirror
  of each (10 views, torchvision's TenCrop). For `stretch` cards, which leave no margin to crop
  from, the image is first stretched to input_size / crop_pct.

The center view is always exactly `images.preprocess`'s output, so `none` is the first view of
every mode.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from PIL import Image

from cvtool.contract import ModelCard

# The resize arithmetic and filters are images.py's, so the crops line up with preprocess().
from cvtool.images import RESAMPLE, normalize_into, pre_crop_size, resize_and_crop

__all__ = ["TTA_MODES", "num_views", "views", "views_into"]

TtaMode = Literal["none", "flip", "flip+crops"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
_VIEWS = {"none": 1, "flip": 2, "flip+crops": 10}


def num_views(mode: str) -> int:
    """How many views `mode` makes of each image."""
    if mode not in _VIEWS:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return _VIEWS[mode]


def _corner_crops(img: Image.Image, card: ModelCard) -> list[Image.Image]:
    """The four (height, width) = input_size corners of the image the center crop is cut from."""
    th, tw = card.input_size
    if card.resize == "stretch":
        big = (int(tw / card.crop_pct), int(th / card.crop_pct))
    else:
        big = pre_crop_size(card, *img.size)
    resized = img.resize(big, RESAMPLE[card.interpolation]) if big != img.size else img
    w, h = resized.size
    boxes = [(0, 0), (w - tw, 0), (0, h - th), (w - tw, h - th)]
    return [resized.crop((x, y, x + tw, y + th)) for x, y in boxes]


def views_into(img: Image.Image, card: ModelCard, mode: str, out: np.ndarray) -> None:
    """Write the views of one decoded image (in the card's channels) into out (V, C, H, W)."""
    n = num_views(mode)
    normalize_into(resize_and_crop(img, card), card, out[0])
    if n == 1:
        return
    out[1] = out[0][:, :, ::-1]  # mirror: reverse the width axis
    if mode == "flip+crops":
        for i, crop in enumerate(_corner_crops(img, card)):
            normalize_into(crop, card, out[2 + 2 * i])
            out[3 + 2 * i] = out[2 + 2 * i][:, :, ::-1]


def views(img: Image.Image, card: ModelCard, mode: str = "none") -> np.ndarray:
    """(V, C, H, W) float32: the views of one decoded image (already in the card's channels)."""
    out = np.empty((num_views(mode), card.channels, *card.input_size), np.float32)
    views_into(img, card, mode, out)
    return out
