"""Fashion-MNIST laid out as a Kaggle-style competition (`cvtool data fashion-mnist OUT`).

OUT/train/<class>/<n>.png   ImageFolder tree of the 60,000 training images
OUT/test/<id>.png           the 10,000 test images, flat, under shuffled numeric ids
OUT/test_labels.csv         id,label (the answer key)
OUT/sample_submission.csv   id,label with a constant label, in id order
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import random
import re
import shutil
import struct
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cvtool.data import DataError

__all__ = ["CLASS_NAMES", "DEFAULT_SOURCE", "safe_class_name", "read_idx", "prepare"]

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX payloads: stable however the .gz was recompressed.
FILES = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def safe_class_name(name: str) -> str:
    """A folder name that is valid everywhere: "T-shirt/top" → "T-shirt_top"."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or "class"


def read_idx(data: bytes, source: str) -> np.ndarray:
    """Parse an (uncompressed) IDX file: big-endian header, then uint8 data."""
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{source}: not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{source}: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DataError(f"{source}: IDX header says {dims} but holds {payload.size} bytes")
    return payload.reshape(dims)


def _fetch(name: str, sha256: str, source: Path | None, cache: Path, log: Callable) -> bytes:
    """IDX bytes from `source`, else downloaded into `cache` and checked against `sha256`."""
    if source is not None:
        path = source / name
        if not path.exists() and (source / name.removesuffix(".gz")).exists():
            path = source / name.removesuffix(".gz")
        if not path.exists():
            raise DataError(f"{path}: not found (expected the Fashion-MNIST IDX files in {source})")
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    cached = cache / name
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"downloading {BASE_URL + name}")
        tmp = cached.with_suffix(".part")
        with urllib.request.urlopen(BASE_URL + name, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, cached)
    data = gzip.decompress(cached.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        cached.unlink()
        raise DataError(f"{name}: checksum mismatch (got {digest[:12]}…, want {sha256[:12]}…)")
    return data


def _write_png(args: tuple[Path, np.ndarray]) -> None:
    path, pixels = args
    Image.fromarray(pixels, "L").save(path, optimize=False)


def prepare(
    out: str | os.PathLike,
    source: str | os.PathLike | None = None,
    seed: int = 0,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the competition layout to `out` and return it.

    `source` is a folder holding the four IDX files (.gz or not); None means the Debian package's
    folder when present, else download. The tree is built in a sibling temporary folder and renamed
    into place at the end, so an interrupted run never leaves a half-written dataset.
    """
    out = Path(out)
    if out.exists() and (out / "test_labels.csv").exists() and not force:
        log(f"{out} already prepared (use --force to rebuild)")
        return out
    if source is None and DEFAULT_SOURCE.is_dir():
        source = DEFAULT_SOURCE
    src = Path(source) if source is not None else None
    cache = out.parent / ".cache-fashion-mnist"
    arrays = {k: read_idx(_fetch(n, h, src, cache, log), n) for k, (n, h) in FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"Fashion-MNIST {split}: image and label counts differ")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    folders = [safe_class_name(c) for c in CLASS_NAMES]
    for f in folders:
        (tmp / "train" / f).mkdir(parents=True)
    (tmp / "test").mkdir(parents=True)

    jobs: list[tuple[Path, np.ndarray]] = []
    counters = [0] * len(CLASS_NAMES)
    for img, y in zip(arrays["train_images"], arrays["train_labels"], strict=True):
        counters[y] += 1
        jobs.append((tmp / "train" / folders[y] / f"{counters[y]}.png", img))
    # Shuffled numeric ids so that file order leaks nothing about the label.
    n_test = len(arrays["test_images"])
    ids = list(range(1, n_test + 1))
    random.Random(seed).shuffle(ids)
    for i, img in zip(ids, arrays["test_images"], strict=True):
        jobs.append((tmp / "test" / f"{i}.png", img))
    log(f"writing {len(jobs)} PNG files under {out}")
    # zlib releases the GIL, so threads do speed up PNG encoding.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(_write_png, jobs, chunksize=256))

    answers = sorted(zip(ids, arrays["test_labels"], strict=True))
    with open(tmp / "test_labels.csv", "w", newline="") as key_file:
        w = csv.writer(key_file)
        w.writerow(["id", "label"])
        w.writerows((i, folders[y]) for i, y in answers)
    with open(tmp / "sample_submission.csv", "w", newline="") as sample_file:
        w = csv.writer(sample_file)
        w.writerow(["id", "label"])
        w.writerows((i, folders[0]) for i, _ in answers)

    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
