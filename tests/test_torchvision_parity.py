"""cvtool's eval preprocessing is bit-identical to torchvision's Resize + CenterCrop + ToTensor +
Normalize on square input sizes, and follows its one stated rule on non-square ones.

The images are PIL images in memory (no JPEG draft), so the comparison is exact: same integer
sizes, the same Pillow filter on the same pixels, the same crop offsets, and the same float32
operations in the same order (x / 255, - mean, / std).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cvtool.contract import ModelCard
from cvtool.images import load_and_preprocess, load_image, pre_crop_size, preprocess, resize_and_crop

torch = pytest.importorskip("torch")
T = pytest.importorskip("torchvision.transforms")
InterpolationMode = T.InterpolationMode

MODES = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}

# (width, height): portrait, landscape, square, tiny, very elongated, exact multiples of the
# target, and sizes where round() and int() of S * long / short differ (640×427 at S = 256:
# 383.70, round gives 384, torchvision's int 383; 800×601 → 340.77; 500×333 at S = 35 → 52.55).
SIZES = [
    (640, 427),
    (427, 640),
    (500, 333),
    (333, 500),
    (500, 375),
    (800, 601),
    (451, 600),
    (97, 61),
    (1024, 683),
    (299, 299),
    (256, 256),
    (512, 384),
    (448, 224),
    (224, 224),
    (225, 224),
    (257, 256),
    (300, 200),
    (3, 2),
    (1, 1),
    (7, 13),
    (2000, 40),
    (40, 2000),
    (1000, 999),
]


def _photo_like(width: int, height: int, channels: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus fine noise: every filter tap and every crop offset matters."""
    rng = np.random.default_rng(seed + width * 7919 + height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(channels):
        wave = np.sin(xx / (3 + 5 * c) + yy / 7.0) * 60 + (xx + 2 * yy) * (100.0 / (width + height))
        planes.append(wave + 100 + rng.normal(0, 25, (height, width)))
    a = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0], "L") if channels == 1 else Image.fromarray(a, "RGB")


def _card(size: int, crop_pct: float, interpolation: str, channels: int) -> ModelCard:
    mean = (0.485, 0.456, 0.406) if channels == 3 else (0.1307,)
    std = (0.229, 0.224, 0.225) if channels == 3 else (0.3081,)
    return ModelCard(
        class_names=("a", "b"),
        channels=channels,
        input_size=(size, size),
        resize="shorter_crop",
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def _torchvision(img: Image.Image, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 crop, normalised float32): the eval transform of torchvision/timm for this card."""
    size = card.input_size[0]
    geometry = T.Compose(
        [
            T.Resize(math.floor(size / card.crop_pct), interpolation=MODES[card.interpolation]),
            T.CenterCrop(size),
        ]
    )
    cropped = geometry(img)
    pixels = T.PILToTensor()(cropped).numpy()
    x = T.Normalize(card.mean, card.std)(T.ToTensor()(cropped)).numpy()
    return pixels, x


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "gray"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize("size,crop_pct", [(224, 0.875), (32, 0.9), (28, 1.0)])
def test_square_shorter_crop_is_bit_identical_to_torchvision(size, crop_pct, interpolation, channels):
    card = _card(size, crop_pct, interpolation, channels)
    for width, height in SIZES:
        img = _photo_like(width, height, channels)
        want_pixels, want = _torchvision(img, card)
        got = preprocess(img, card)
        # The geometry first (same resized size, same filter, same crop offsets): exact uint8.
        got_pixels = np.asarray(resize_and_crop(img, card)).reshape(size, size, channels)
        np.testing.assert_array_equal(
            got_pixels.transpose(2, 0, 1), want_pixels, err_msg=f"pixels differ for {width}×{height}"
        )
        # Then the values: the same float32 operations in the same order, so bit for bit.
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"values differ for {width}×{height}")


def test_the_sizes_include_ones_where_rounding_the_long_side_differs():
    """Without these the parity test could pass with round() in place of int()."""
    s = 256
    differs = [(w, h) for w, h in SIZES if round(s * max(w, h) / min(w, h)) != int(s * max(w, h) / min(w, h))]
    assert len(differs) >= 4


@pytest.mark.parametrize("width,height", SIZES)
def test_pre_crop_size_is_torchvision_resize_output_size(width, height):
    from torchvision.transforms.functional import _compute_resized_output_size

    card = _card(224, 0.875, "bilinear", 3)
    new_h, new_w = _compute_resized_output_size((height, width), [256])
    assert pre_crop_size(card, width, height) == (new_w, new_h)


# --- non-square input sizes ---------------------------------------------------------------------


def _rect_card(h: int, w: int, crop_pct: float = 0.875) -> ModelCard:
    return ModelCard(class_names=("a",), input_size=(h, w), crop_pct=crop_pct)


@pytest.mark.parametrize(
    "width,height,expected",
    [
        # Target (h, w) = (224, 320) → cover (256, 365): 320 / 0.875 = 365.71 floors to 365.
        # Wide image: the height binds (256 / 500 > 365 / 1000) → h = 256, w = int(256 * 1000 / 500).
        (1000, 500, (512, 256)),
        # Tall image: the width binds → w = 365, h = int(365 * 1000 / 500) = 730.
        (500, 1000, (365, 730)),
        # Nearly the cover's own aspect ratio: the height binds (256 / 512 > 365 / 731) and int()
        # truncates 256 * 731 / 512 = 365.5 to 365 (rounding would give 366).
        (731, 512, (365, 256)),
        # The width binds and int() truncates 365 * 1001 / 500 = 730.73 to 730.
        (500, 1001, (365, 730)),
        # Same aspect ratio as the cover: both sides exactly.
        (365, 256, (365, 256)),
        # Small images are enlarged by the same rule: 256 / 7 > 365 / 10, w = int(256 * 10 / 7).
        (10, 7, (365, 256)),
    ],
)
def test_non_square_rule(width, height, expected):
    assert pre_crop_size(_rect_card(224, 320), width, height) == expected


@pytest.mark.parametrize("width,height", [*SIZES, (4000, 10), (10, 4000)])
@pytest.mark.parametrize("hw", [(224, 320), (320, 224), (17, 64), (100, 99)])
def test_non_square_rule_properties(width, height, hw):
    card = _rect_card(*hw)
    sh, sw = math.floor(hw[0] / card.crop_pct), math.floor(hw[1] / card.crop_pct)
    new_w, new_h = pre_crop_size(card, width, height)
    # Never below the cover size, so the center crop always fits.
    assert new_w >= sw and new_h >= sh
    # The binding side gets its target exactly; the other is int(target * other / binding).
    if sh * width >= sw * height:
        assert (new_w, new_h) == (int(sh * width / height), sh)
    else:
        assert (new_w, new_h) == (sw, int(sw * height / width))
    if new_w * new_h < 4_000_000:  # skip resizing the very elongated ones to 146 000 rows
        assert preprocess(_photo_like(width, height, 3), card).shape == (3, *hw)


def test_non_square_rule_reduces_to_torchvision_for_square_sizes():
    for width, height in SIZES:
        assert pre_crop_size(_rect_card(224, 224), width, height) == pre_crop_size(
            _card(224, 0.875, "bilinear", 3), width, height
        )


# --- JPEG: draft on and off ---------------------------------------------------------------------

# The largest |Δ| after ImageNet normalisation that draft decoding caused on 300 JPEGs made from
# real photos (bench/jpeg_draft.py, bench/RESULTS.md: 0.192, about 11 levels of 255), rounded up.
DRAFT_MAX_ABS_DIFF = 0.2


def _big_jpeg(tmp_path, width=1600, height=1200, seed=1):
    path = tmp_path / f"photo_{width}x{height}.jpg"
    _photo_like(width, height, 3, seed).save(path, quality=90)
    return path


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_without_draft_is_bit_identical_to_a_full_decode(tmp_path, channels):
    path = _big_jpeg(tmp_path)
    card = ModelCard(**{**_card(224, 0.875, "bicubic", channels).to_dict(), "jpeg_draft": False})
    with Image.open(path) as img:
        full = img.convert("L" if channels == 1 else "RGB")
    _, want = _torchvision(full, card)
    np.testing.assert_array_equal(load_and_preprocess(path, card), want)


def test_jpeg_with_draft_differs_but_within_the_measured_bound(tmp_path):
    path = _big_jpeg(tmp_path)
    card = _card(224, 0.875, "bilinear", 3)
    assert card.jpeg_draft is True  # the default
    assert load_image(path, card).size == (800, 600)  # decoded at 1/2 scale
    with Image.open(path) as img:
        _, want = _torchvision(img.convert("RGB"), card)
    got = load_and_preprocess(path, card)
    diff = np.abs(got - want)
    assert diff.max() > 0  # draft really decoded at reduced size
    assert diff.max() <= DRAFT_MAX_ABS_DIFF
