"""Every decodable image mode is handled; undecodable files fail with the path and a reason."""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cvtool import images
from cvtool.cli import app
from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_and_preprocess, load_image

RGB = ModelCard(class_names=("a", "b"), channels=3, input_size=(16, 16), resize="shorter_crop")
GRAY = ModelCard(
    class_names=("a", "b"), channels=1, input_size=(16, 16), resize="stretch", mean=(0.5,), std=(0.5,)
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height, followed by a tiny (wrong) IDAT: a bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    f = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(f, quality=95)  # pure red in CMYK
    img = load_image(f, RGB)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img, dtype=int)[10, 10]
    assert r > 200 and g < 60 and b < 60


def test_one_bit_image(tmp_path):
    f = tmp_path / "bits.png"
    a = np.zeros((8, 8), bool)
    a[:, 4:] = True
    Image.fromarray(a).convert("1").save(f)
    got = np.asarray(load_image(f, GRAY))
    assert set(np.unique(got)) == {0, 255}
    assert got[0, 0] == 0 and got[0, 7] == 255


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (10, 4000)])
@pytest.mark.parametrize("card", [RGB, GRAY], ids=["shorter_crop", "stretch"])
def test_extreme_sizes(tmp_path, size, card):
    f = tmp_path / "x.png"
    Image.new("RGB", size, (120, 30, 200)).save(f)
    x = load_and_preprocess(f, card)
    assert x.shape == (card.channels, 16, 16) and np.isfinite(x).all()


def test_large_jpeg_is_decoded_reduced_and_a_png_bomb_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(big, quality=80)
    # Pretend the limit is 1 Mpx: the JPEG still loads, because draft() decodes it at 1/8 scale.
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 1_000_000)
    img = load_image(big, GRAY)
    assert img.size == (375, 250)
    assert load_and_preprocess(big, GRAY).shape == (1, 16, 16)
    with pytest.raises(ImageError, match="too large"):
        load_image(big)  # without a card there is no target size, so no draft
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(2000, 1000))
    with pytest.raises(ImageError, match=r"bomb\.png: image too large: 2000×1000"):
        load_image(bomb, RGB)


def test_decompression_bomb_header_with_default_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))  # 2.5 gigapixels claimed in 100 bytes
    with pytest.raises(ImageError, match="image too large"):
        load_image(bomb, RGB)


def _truncated(fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"hello, I am text", "not a recognised image"),
        ("cut.jpg", _truncated("JPEG"), "cannot decode"),
        ("cut.png", _truncated("PNG"), "cannot decode"),
    ],
)
def test_undecodable_files(tmp_path, name, content, reason):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ImageError) as e:
        load_image(f, RGB)
    assert e.value.path == str(f) and reason in e.value.reason and str(f) in str(e.value)


def test_missing_and_unreadable_files(tmp_path):
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="file not found"):
        load_image(link, RGB)
    if os.geteuid() != 0:  # root reads anything, so the permission case needs a normal user
        f = tmp_path / "locked.png"
        Image.new("RGB", (4, 4)).save(f)
        f.chmod(0)
        with pytest.raises(ImageError, match="permission denied"):
            load_image(f, RGB)


def test_predict_keeps_every_id_with_a_folder_of_oddities(rgb_model, tmp_path):
    """A folder mixing every odd mode and broken file: decodable ones are predicted, broken ones
    are filled and listed, names with spaces and unicode work, nothing is lost."""
    d = tmp_path / "test"
    d.mkdir()
    Image.new("CMYK", (40, 30), (0, 50, 100, 0)).save(d / "1.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(d / "2.png")  # 16-bit gray
    Image.new("RGBA", (9, 9), (0, 0, 0, 0)).save(d / "3.png")
    Image.new("LA", (9, 9), (50, 128)).save(d / "4.png")
    Image.new("1", (9, 9), 1).save(d / "5.png")
    Image.new("RGB", (1, 1)).save(d / "6.png")
    Image.new("RGB", (4000, 10)).save(d / "7.png")
    p = Image.new("P", (9, 9), 3)
    p.info["transparency"] = 3
    p.save(d / "8.png")
    Image.new("RGB", (12, 12)).save(d / "été 9.png")
    (d / "10.jpg").write_bytes(b"")
    (d / "11.png").write_bytes(_truncated("PNG"))
    (d / "12.png").write_bytes(png_header_only(50_000, 50_000))
    (d / "13.jpg").mkdir()  # a directory named like an image
    (d / "._1.jpg").write_bytes(b"\0\0")
    (d / "notes.txt").write_text("x")
    out = tmp_path / "sub.csv"
    r = CliRunner().invoke(app, ["predict", str(d), "--model", str(rgb_model), "-o", str(out)])
    assert r.exit_code == 1, r.output
    ids = [row[0] for row in list(csv.reader(out.open(encoding="utf-8")))[1:]]
    assert sorted(ids) == sorted(["1", "2", "3", "4", "5", "6", "7", "8", "été 9", "10", "11", "12"])
    failed = list(csv.reader((tmp_path / "sub.failures.csv").open(encoding="utf-8")))[1:]
    assert sorted(os.path.basename(p) for p, _ in failed) == ["10.jpg", "11.png", "12.png"]
    assert "3 image(s) could not be read" in r.output
