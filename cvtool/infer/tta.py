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

from functools import lru_cache

import numpy as np
from PIL import Image

from cvtool.contract import ModelCard

# The resize arithmetic and filters are images.py's, so the crops line up with preprocess().
from cvtool.images import _RESAMPLE, _pre_crop_size, resize_and_crop

__all__ = ["TTA_MODES", "num_views", "views", "views_into"]

TTA_MODES = ("none", "flip", "flip+crops")
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
        big = _pre_crop_size(card, *img.size)
    resized = img.resize(big, _RESAMPLE[card.interpolation]) if big != img.size else img
    w, h = resized.size
    boxes = [(0, 0), (w - tw, 0), (0, h - th), (w - tw, h - th)]
    return [resized.crop((x, y, x + tw, y + th)) for x, y in boxes]


class _Normaliser:
    """images.preprocess's arithmetic, written straight into a batch buffer.

    Same operations in the same order and precision, so the result is bit-for-bit preprocess()'s
    (tests/test_infer_pipeline.py checks it), but it reads the image as uint8 and makes one
    float32 pass, without preprocess's temporary arrays and channel-last → channel-first copy:
    ~5× less time per 224² image, which the model would otherwise wait for on a 2-core CPU.
    """

    def __init__(self, card: ModelCard):
        c = card.channels
        mean = np.asarray(card.mean, dtype=np.float32) / np.float32(card.scale)
        inv_std = np.float32(card.scale) / np.asarray(card.std, dtype=np.float32)
        self.mean = mean.reshape(c, 1, 1)
        self.inv_std = inv_std.reshape(c, 1, 1)

    def __call__(self, img: Image.Image, out: np.ndarray) -> None:
        """img: input_size, in the card's channels → out (C, H, W) float32."""
        a = np.asarray(img)  # (H, W) or (H, W, 3) uint8
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        np.subtract(a, self.mean, out=out, dtype=np.float32)
        np.multiply(out, self.inv_std, out=out)


@lru_cache(maxsize=16)
def _normaliser(card: ModelCard) -> _Normaliser:
    return _Normaliser(card)  # one per card, not per image: building one costs ~20 µs


def views_into(img: Image.Image, card: ModelCard, mode: str, out: np.ndarray) -> None:
    """Write the views of one decoded image (in the card's channels) into out (V, C, H, W)."""
    n = num_views(mode)
    norm = _normaliser(card)
    norm(resize_and_crop(img, card), out[0])
    if n == 1:
        return
    out[1] = out[0][:, :, ::-1]  # mirror: reverse the width axis
    if mode == "flip+crops":
        for i, crop in enumerate(_corner_crops(img, card)):
            norm(crop, out[2 + 2 * i])
            out[3 + 2 * i] = out[2 + 2 * i][:, :, ::-1]


def views(img: Image.Image, card: ModelCard, mode: str = "none") -> np.ndarray:
    """(V, C, H, W) float32: the views of one decoded image (already in the card's channels)."""
    out = np.empty((num_views(mode), card.channels, *card.input_size), np.float32)
    views_into(img, card, mode, out)
    return out
