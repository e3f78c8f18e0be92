"""Decoding (EXIF, 16-bit, alpha, palettes, broken files) and eval-time preprocessing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_and_preprocess, load_image, preprocess, resize_and_crop


def _card(channels: int = 3, size: tuple[int, int] = (32, 32), **kw) -> ModelCard:
    kw.setdefault("mean", (0.5,) * channels)
    kw.setdefault("std", (0.25,) * channels)
    return ModelCard(class_names=("a", "b"), channels=channels, input_size=size, **kw)


def _identity_card(channels: int = 1, size: tuple[int, int] = (32, 32), **kw) -> ModelCard:
    """Values pass through unchanged: scale 1, mean 0, std 1, nearest resampling."""
    return ModelCard(
        class_names=("a",),
        channels=channels,
        input_size=size,
        scale=1.0,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        interpolation="nearest",
        **kw,
    )


# --- preprocess ---------------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_constant_value():
    card = _card(3, (24, 40), resize="stretch", mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    img = Image.new("RGB", (50, 30), (100, 100, 100))
    x = preprocess(img, card)
    assert x.shape == (3, 24, 40)
    assert x.dtype == np.float32
    assert x.flags["C_CONTIGUOUS"]
    for c, (m, s) in enumerate(zip(card.mean, card.std, strict=True)):
        expected = (100 / 255 - m) / s
        np.testing.assert_allclose(x[c], expected, rtol=1e-5, atol=1e-6)


def test_preprocess_grayscale_value():
    card = _card(1, (28, 28))
    x = preprocess(Image.new("L", (28, 28), 255), card)
    assert x.shape == (1, 28, 28)
    np.testing.assert_allclose(x, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_preprocess_respects_scale():
    card = ModelCard(class_names=("a",), channels=1, input_size=(4, 4), scale=1.0, mean=(10.0,), std=(2.0,))
    x = preprocess(Image.new("L", (4, 4), 30), card)
    np.testing.assert_allclose(x, (30 - 10) / 2, rtol=1e-6)


def _column_ramp(width: int = 100, height: int = 50) -> Image.Image:
    """Grayscale image whose pixel value is 2 × its column index."""
    return Image.fromarray(np.tile((np.arange(width) * 2).astype(np.uint8), (height, 1)), "L")


def test_shorter_crop_keeps_center():
    # 100×50 → shorter side to 32 (crop_pct 1.0) gives 64×32, then the center 32 columns.
    card = _identity_card(1, (32, 32), resize="shorter_crop", crop_pct=1.0)
    out = resize_and_crop(_column_ramp(), card)
    assert out.size == (32, 32)
    a = np.asarray(out)
    # Every row is the same; nearest sampling of source column floor((x + 16 + 0.5) / 0.64).
    assert (a == a[0]).all()
    expected = [2 * int((j + 16 + 0.5) / 0.64) for j in range(32)]
    assert a[0].tolist() == expected
    # Only the middle half of the source survives: columns 25..74.
    assert a.min() >= 2 * 25 and a.max() <= 2 * 74


def test_shorter_crop_pct_enlarges_before_crop():
    # crop_pct 0.5: shorter side to 64 → 128×64, center 32×32 = source columns 37.5..62.5.
    card = _identity_card(1, (32, 32), resize="shorter_crop", crop_pct=0.5)
    a = np.asarray(resize_and_crop(_column_ramp(), card))
    assert a.shape == (32, 32)
    assert a.min() >= 2 * 37 and a.max() <= 2 * 63


def test_stretch_keeps_whole_image():
    card = _identity_card(1, (32, 32), resize="stretch")
    a = np.asarray(resize_and_crop(_column_ramp(), card))
    assert a.shape == (32, 32)
    # Both ends of the source are still there: nothing cropped.
    assert a[0, 0] <= 2 * 2 and a[0, -1] >= 2 * 97
    assert np.all(np.diff(a[0].astype(int)) > 0)


def test_non_square_input_size_is_height_width():
    card = _identity_card(3, (10, 20), resize="shorter_crop", crop_pct=1.0)
    x = preprocess(Image.new("RGB", (300, 300), (1, 2, 3)), card)
    assert x.shape == (3, 10, 20)
    np.testing.assert_array_equal(x[:, 0, 0], [1, 2, 3])


# --- decoding -----------------------------------------------------------------------------------


def test_exif_orientation_applied(tmp_path: Path):
    # Stored 40×20: left half red, right half blue. Orientation 6 = rotate 90° clockwise to view.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a, "RGB").save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    px = np.asarray(img).astype(int)
    # The left (red) part of the stored image is now on top.
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 60
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 60


def _xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/>'
        b"</rdf:RDF></x:xmpmeta>" % orientation
    )


@pytest.mark.parametrize("where", ["png-exif", "png-xmp", "tiff", "webp-exif", "jpeg-xmp", "none"])
def test_orientation_from_every_source_equals_pillow(tmp_path: Path, where: str):
    # load_image skips exif_transpose when the file carries no orientation data at all; wherever
    # Pillow finds one, the result must be exactly Pillow's own exif_transpose.
    a = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    img = Image.fromarray(a, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    ext, kwargs = {
        "png-exif": (".png", {"exif": exif.tobytes()}),
        "png-xmp": (".png", {"pnginfo": _png_text("XML:com.adobe.xmp", _xmp(6).decode())}),
        "tiff": (".tiff", {"exif": exif}),
        "webp-exif": (".webp", {"exif": exif.tobytes(), "lossless": True}),
        "jpeg-xmp": (".jpg", {"xmp": _xmp(6), "quality": 95}),
        "none": (".png", {}),
    }[where]
    path = tmp_path / f"oriented{ext}"
    img.save(path, **kwargs)
    with Image.open(path) as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    got = load_image(path)
    assert got.size == ((40, 20) if where == "none" else (20, 40))
    np.testing.assert_array_equal(np.asarray(got), expected)


def _png_text(key: str, value: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt(key, value)
    return info


def test_16bit_grayscale_scaled_not_clipped(tmp_path: Path):
    values = np.array([[65535, 32768, 0, 1000]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    img = load_image(path, _card(1))
    assert img.mode == "L"
    assert np.asarray(img)[0].tolist() == [255, 128, 0, 4]
    rgb = load_image(path, _card(3))
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [255, 128, 0, 4]


def test_16bit_dark_image_is_not_treated_as_8bit(tmp_path: Path):
    # A 16-bit image whose values are all ≤ 255 is nearly black, not full-range 8-bit.
    path = tmp_path / "dark.png"
    Image.fromarray(np.array([[255, 200, 0]], np.uint16)).save(path)
    assert np.asarray(load_image(path, _card(1)))[0].tolist() == [1, 1, 0]


def test_rgba_transparent_composited_on_white(tmp_path: Path):
    a = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(path)
    img = load_image(path, _card(3))
    assert img.mode == "RGB"
    px = np.asarray(img).astype(int)
    assert px[0, 0].tolist() == [255, 255, 255]
    assert px[0, 1].tolist() == [0, 0, 255]
    # Half-transparent black over white is mid gray.
    assert all(abs(v - 127) <= 1 for v in px[0, 2])


def test_la_transparent_composited_on_white(tmp_path: Path):
    a = np.array([[[0, 0], [0, 255]]], np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(path)
    assert np.asarray(load_image(path, _card(1)))[0].tolist() == [255, 0]


def test_palette_png_with_transparency(tmp_path: Path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    out = load_image(path, _card(3))
    assert out.mode == "RGB"
    px = np.asarray(out).tolist()[0]
    assert px == [[255, 255, 255], [0, 0, 255], [0, 255, 0]]


def test_grayscale_file_to_three_channels(tmp_path: Path):
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    path = tmp_path / "gray.png"
    Image.fromarray(a, "L").save(path)
    card = _identity_card(3, (8, 8), resize="stretch")
    x = load_and_preprocess(path, card)
    assert x.shape == (3, 8, 8)
    np.testing.assert_array_equal(x[0], a)
    np.testing.assert_array_equal(x[1], x[0])
    np.testing.assert_array_equal(x[2], x[0])


def test_rgb_file_to_one_channel(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    card = _identity_card(1, (8, 8), resize="stretch")
    img = load_image(path, card)
    assert img.mode == "L"
    x = load_and_preprocess(path, card)
    assert x.shape == (1, 8, 8)
    # ITU-R 601-2 luma: 255 × 0.299.
    np.testing.assert_array_equal(x, 76)


def test_load_without_card_gives_rgb(tmp_path: Path):
    path = tmp_path / "g.png"
    Image.new("L", (5, 7), 9).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (5, 7)


# --- broken files -------------------------------------------------------------------------------


def _assert_image_error(path: Path, reason: str | None = None) -> None:
    with pytest.raises(ImageError) as info:
        load_image(path, _card(3))
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    if reason is not None:
        assert reason in info.value.reason


def test_zero_byte_jpg(tmp_path: Path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_image_error(path, "empty file")


def test_text_file_named_jpg(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _assert_image_error(path, "not a recognised image")


def test_truncated_png(tmp_path: Path):
    good = tmp_path / "good.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path)


def test_missing_file(tmp_path: Path):
    _assert_image_error(tmp_path / "nope.png", "file not found")


def test_error_surfaces_through_load_and_preprocess(tmp_path: Path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="bad.png"):
        load_and_preprocess(path, _card(3))


# --- draft decoding of large JPEGs ---------------------------------------------------------------


def test_large_jpeg_decoded_via_draft(tmp_path: Path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 2000), (200, 100, 50)).save(path, quality=90)
    card = _card(3, (28, 28))
    img = load_image(path, card)
    # draft() decodes at a 1/2^k scale that is still ≥ twice the 32×32 the resize needs.
    assert img.width < 2000 and img.height < 2000
    assert img.width >= 64 and img.height >= 64
    assert img.size == (250, 250)
    # Without a card the image is decoded at full size.
    assert load_image(path).size == (2000, 2000)
    x = load_and_preprocess(path, card)
    assert x.shape == (3, 28, 28) and x.dtype == np.float32
    expected = (np.array([200, 100, 50]) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=0.05)


def test_large_jpeg_draft_one_channel(tmp_path: Path):
    path = tmp_path / "big_gray.jpg"
    Image.new("L", (2000, 1000), 128).save(path)
    x = load_and_preprocess(path, _card(1, (28, 28)))
    assert x.shape == (1, 28, 28)
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=0.05)


def test_draft_respects_exif_rotation(tmp_path: Path):
    # Stored 4000×500 with orientation 6 → viewed 500×4000. Target 50 high × 500 wide
    # (shorter_crop, crop_pct 1) needs the full 500-pixel width; draft must not go below it.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated_big.jpg"
    Image.new("RGB", (4000, 500), (10, 20, 30)).save(path, exif=exif.tobytes())
    card = _card(3, (50, 500), resize="shorter_crop", crop_pct=1.0)
    img = load_image(path, card)
    assert img.size[0] < img.size[1]  # orientation applied
    assert img.width >= 500  # actual: 125 (decoded at 1/4 scale, then upsampled 4×)


def test_jpeg_draft_off_decodes_at_full_size(tmp_path: Path, monkeypatch):
    from cvtool import images

    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (200, 100, 50)).save(path, quality=90)
    card = _card(3, (28, 28))
    assert load_image(path, card).size == (250, 188)  # 1/8 scale with draft (the default)
    full = dataclasses.replace(card, jpeg_draft=False)
    assert load_image(path, full).size == (2000, 1500)
    # The size check applies to what is decoded: without draft, the full size.
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 1_000_000)
    assert load_image(path, card).size == (250, 188)
    with pytest.raises(ImageError, match="too large: 2000×1500"):
        load_image(path, full)
