"""Decoding and eval-time preprocessing, in Pillow and numpy.

This is the one implementation of the card's preprocessing. Training's validation loop, export
verification, predict and evaluate all call `load_image` + `preprocess`, so what the model saw in
validation is bit-for-bit what it sees in predict. For square input sizes it is also bit for bit
torchvision's Resize + CenterCrop + ToTensor + Normalize on the same decoded image (a full
decode: the card's `jpeg_draft` off, or an image too small for draft to act).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError

__all__ = [
    "ImageError",
    "load_image",
    "preprocess",
    "load_and_preprocess",
    "normalize_into",
    "pre_crop_size",
    "resize_and_crop",
    "to_channels",
]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# Pillow's own decompression-bomb check runs in Image.open on the *stored* size, before draft()
# can shrink a large JPEG, and silencing its warning is process-global (not thread-safe). cvtool
# checks the size that will actually be decoded instead, with Pillow's default error threshold.
Image.MAX_IMAGE_PIXELS = None
MAX_DECODED_PIXELS = 2 * 89_478_485


class ImageError(CvtoolError):
    """An image file could not be read; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def pre_crop_size(card: ModelCard, width: int, height: int) -> tuple[int, int]:
    """(width, height) the image is resized to before the center crop.

    `shorter_crop`: the cover size is (floor(h / crop_pct), floor(w / crop_pct)) for input_size
    (h, w). The side that needs the larger scale factor ("binds"; the height on a tie) gets its
    cover size exactly; the other gets int(cover * other / binding), which is never below its own
    cover size. For square inputs this is torchvision's Resize(floor(size / crop_pct)).
    """
    th, tw = card.input_size
    if card.resize == "stretch":
        return tw, th
    sh, sw = math.floor(th / card.crop_pct), math.floor(tw / card.crop_pct)
    # Integer comparison of sh / height >= sw / width: no float ties to break.
    if sh * width >= sw * height:
        # torchvision's arithmetic, in its order: int(size * long / short) truncates, not rounds.
        return max(sw, int(sh * width / height)), sh
    return sw, max(sh, int(sw * height / width))


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (channels=1) or RGB (channels=3)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: scale the full range to 8 bits instead of clipping.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels composite onto white, as image viewers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)  # convert() to the same mode copies


# Where Pillow's getexif() looks for an orientation, after load(): EXIF blocks (JPEG, PNG eXIf,
# WebP), PNG text chunks from ImageMagick, XMP packets, and TIFF's own tags.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _may_be_oriented(img: Image.Image) -> bool:
    """Whether the loaded image carries anything exif_transpose could act on.

    exif_transpose parses the EXIF block and copies the image even when there is nothing to
    do; for small files (28×28 PNGs) that is a fifth of the decoding time.
    """
    return hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_SOURCES)


def load_image(path: str | os.PathLike, card: ModelCard | None = None) -> Image.Image:
    """Decode an image file, apply its EXIF orientation, and convert to the card's channels.

    With a card whose `jpeg_draft` is on (the default), large JPEGs are decoded at reduced size via
    draft() (at least twice the size the resize needs, so quality is kept); with it off, or
    without a card, at full size. Raises ImageError naming the file and the reason.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if card is not None and card.jpeg_draft and img.format == "JPEG":
                # EXIF orientations 5-8 swap width and height once applied.
                rotated = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
                need_w, need_h = pre_crop_size(card, *((h, w) if rotated else (w, h)))
                if rotated:
                    need_w, need_h = need_h, need_w
                # draft() picks the largest 1/2^k scale (k <= 3) still >= the requested size.
                img.draft(img.mode, (2 * need_w, 2 * need_h))
                w, h = img.size
            if w * h > MAX_DECODED_PIXELS:
                raise ImageError(
                    path,
                    f"image too large: {w}×{h} pixels would be decoded "
                    f"(limit {MAX_DECODED_PIXELS:,}; a decompression bomb?)",
                )
            img.load()
            if _may_be_oriented(img):
                img = ImageOps.exif_transpose(img)
            return to_channels(img, card.channels if card is not None else 3)
    except FileNotFoundError as e:
        raise ImageError(path, "file not found") from e
    except PermissionError as e:
        raise ImageError(path, "permission denied") from e
    except IsADirectoryError as e:
        raise ImageError(path, "is a directory") from e
    except Image.UnidentifiedImageError as e:
        size = path.stat().st_size if path.exists() else 0
        raise ImageError(path, "empty file" if size == 0 else "not a recognised image") from e
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        # Truncated or corrupt data surfaces as OSError/ValueError/SyntaxError from the decoders.
        raise ImageError(path, f"cannot decode: {e}") from e


def resize_and_crop(img: Image.Image, card: ModelCard) -> Image.Image:
    """Resize (stretch or shorter-side) and center-crop to the card's input size."""
    th, tw = card.input_size
    w, h = pre_crop_size(card, *img.size)
    if (w, h) != img.size:
        img = img.resize((w, h), RESAMPLE[card.interpolation])
    if (w, h) != (tw, th):
        # Same rounding as torchvision's center_crop.
        left = int(round((w - tw) / 2.0))
        top = int(round((h - th) / 2.0))
        img = img.crop((left, top, left + tw, top + th))
    return img


@lru_cache(maxsize=16)
def _affine(card: ModelCard) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """(1 / scale, mean, std) in float32, the last two shaped (C, 1, 1): one set per card."""
    divisor = np.float32(1.0 / card.scale)
    mean = np.asarray(card.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(-1, 1, 1)
    return divisor, mean, std


def normalize_into(img: Image.Image, card: ModelCard, out: np.ndarray) -> None:
    """Image already at input_size, in the card's channels → `out` (C, H, W) float32, in place.

    Computed as torchvision's ToTensor + Normalize do, one float32 rounding per step in the same
    order: x / (1 / scale) (x / 255 for the default scale), then - mean, then / std. So the values
    are bit for bit theirs, written straight from the uint8 pixels into `out`.
    """
    a = np.asarray(img)  # (H, W) or (H, W, 3) uint8
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # a (C, H, W) view, no copy
    divisor, mean, std = _affine(card)
    # Three passes where (x - mean / scale) * (scale / std) takes two (about 70 µs more per 224²
    # RGB image here), bought for exact equality with torchvision-preprocessed references.
    np.divide(a, divisor, out=out, dtype=np.float32)
    np.subtract(out, mean, out=out)
    np.divide(out, std, out=out)


def preprocess(img: Image.Image, card: ModelCard) -> np.ndarray:
    """PIL image (already in the card's channels) → normalised (C, H, W) float32 array."""
    out = np.empty((card.channels, *card.input_size), dtype=np.float32)
    normalize_into(resize_and_crop(img, card), card, out)
    return out


def load_and_preprocess(path: str | os.PathLike, card: ModelCard) -> np.ndarray:
    """Decode + preprocess one file; raises ImageError."""
    return preprocess(load_image(path, card), card)
