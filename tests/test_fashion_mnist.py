"""Fashion-MNIST competition layout, built from tiny fake IDX files (no download)."""

from __future__ import annotations

import csv
import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvtool.data import DataError
from cvtool.fashion_mnist import CLASS_NAMES, FILES, prepare, read_idx, safe_class_name

N_TRAIN, N_TEST = 30, 20


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def _fake_source(root: Path, gz: bool = True, seed: int = 0):
    """Write the four IDX files; returns (train_images, train_labels, test_images, test_labels)."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    # Several classes, including "T-shirt/top" (0) and "Ankle boot" (9); some classes absent.
    train_y = np.array([0, 1, 2, 9, 5, 0] * 5, dtype=np.uint8)
    test_y = np.array([9, 0, 3, 1, 0] * 4, dtype=np.uint8)
    payloads = {
        "train_images": _idx_images(train_x),
        "train_labels": _idx_labels(train_y),
        "test_images": _idx_images(test_x),
        "test_labels": _idx_labels(test_y),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, (name, _) in FILES.items():
        if gz:
            (root / name).write_bytes(gzip.compress(payloads[key]))
        else:
            (root / name.removesuffix(".gz")).write_bytes(payloads[key])
    return train_x, train_y, test_x, test_y


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("fmnist")
    arrays = _fake_source(base / "src")
    logs: list[str] = []
    out = prepare(base / "out", source=base / "src", log=logs.append)
    return out, arrays, logs


def test_safe_class_name():
    assert safe_class_name("T-shirt/top") == "T-shirt_top"
    assert safe_class_name("Ankle boot") == "Ankle_boot"
    assert safe_class_name("///") == "class"
    assert safe_class_name("..a..") == "a"


def test_train_folders_are_safe_names(prepared):
    out, _, _ = prepared
    folders = sorted(d.name for d in (out / "train").iterdir())
    assert folders == sorted(safe_class_name(c) for c in CLASS_NAMES)
    assert (out / "train" / "T-shirt_top").is_dir()
    assert (out / "train" / "Ankle_boot").is_dir()
    assert not any("/" in f or " " in f for f in folders)
    assert not (out.parent / (out.name + ".partial")).exists()


def test_train_counts_and_pixels(prepared):
    out, (train_x, train_y, _, _), _ = prepared
    counts = Counter(int(y) for y in train_y)
    for k, name in enumerate(CLASS_NAMES):
        files = sorted((out / "train" / safe_class_name(name)).glob("*.png"))
        assert len(files) == counts.get(k, 0), name
    # train/<class>/<n>.png is the n-th image of that class in IDX order.
    for k in counts:
        idx = np.flatnonzero(train_y == k)
        folder = out / "train" / safe_class_name(CLASS_NAMES[k])
        for n, i in enumerate(idx, start=1):
            np.testing.assert_array_equal(_png(folder / f"{n}.png"), train_x[i])


def test_test_folder_ids(prepared):
    out, _, _ = prepared
    names = sorted(p.name for p in (out / "test").iterdir())
    assert names == sorted(f"{i}.png" for i in range(1, N_TEST + 1))


def test_test_labels_match_pixels(prepared):
    out, (_, _, test_x, test_y), _ = prepared
    rows = _read_csv(out / "test_labels.csv")
    assert rows[0] == ["id", "label"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, N_TEST + 1))
    seen = set()
    for id_, label in rows[1:]:
        pixels = _png(out / "test" / f"{id_}.png")
        # Random images are unique, so the PNG identifies its IDX index.
        matches = [j for j in range(N_TEST) if np.array_equal(test_x[j], pixels)]
        assert len(matches) == 1
        j = matches[0]
        seen.add(j)
        assert label == safe_class_name(CLASS_NAMES[test_y[j]])
    assert seen == set(range(N_TEST))


def test_test_ids_are_shuffled(prepared):
    out, (_, _, test_x, _), _ = prepared
    first = [
        j
        for i in range(1, 6)
        for j in range(N_TEST)
        if np.array_equal(test_x[j], _png(out / "test" / f"{i}.png"))
    ]
    assert first != [0, 1, 2, 3, 4]


def test_sample_submission(prepared):
    out, _, _ = prepared
    labels = _read_csv(out / "test_labels.csv")
    sample = _read_csv(out / "sample_submission.csv")
    assert sample[0] == ["id", "label"]
    assert [r[0] for r in sample[1:]] == [r[0] for r in labels[1:]]
    assert {r[1] for r in sample[1:]} == {"T-shirt_top"}


def test_second_call_does_not_rebuild(prepared, tmp_path: Path):
    out, _, _ = prepared
    before = (out / "test_labels.csv").stat().st_mtime_ns
    logs: list[str] = []
    # A source that does not exist proves nothing is read.
    assert prepare(out, source=tmp_path / "nowhere", log=logs.append) == out
    assert any("already prepared" in m for m in logs)
    assert (out / "test_labels.csv").stat().st_mtime_ns == before


def test_force_rebuilds_and_seed_changes_ids(tmp_path: Path):
    _fake_source(tmp_path / "src", gz=False)  # uncompressed IDX files are accepted too
    out = prepare(tmp_path / "out", source=tmp_path / "src", seed=0, log=lambda m: None)
    first = (out / "test_labels.csv").read_text()
    prepare(out, source=tmp_path / "src", seed=1, log=lambda m: None)
    assert (out / "test_labels.csv").read_text() == first  # not rebuilt without force
    prepare(out, source=tmp_path / "src", seed=1, force=True, log=lambda m: None)
    assert (out / "test_labels.csv").read_text() != first
    assert len(list((out / "test").glob("*.png"))) == N_TEST


def test_missing_source_file(tmp_path: Path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="not found"):
        prepare(tmp_path / "out", source=tmp_path / "src", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_read_idx_parses():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_idx_images(x), "x"), x)
    y = np.array([3, 1, 4], np.uint8)
    np.testing.assert_array_equal(read_idx(_idx_labels(y), "y"), y)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x1f\x8b\x08\x00",  # gzip magic: not decompressed
        struct.pack(">II", 0x00000C01, 1) + b"\0" * 8,  # float data type
        struct.pack(">II", 0x01000801, 1) + b"\0",  # non-zero leading bytes
    ],
)
def test_read_idx_rejects_bad_header(data):
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(data, "bad.idx")


def test_read_idx_rejects_size_mismatch():
    data = struct.pack(">IIII", 0x00000803, 2, 28, 28) + b"\0" * (28 * 28)
    with pytest.raises(DataError, match="holds 784 bytes"):
        read_idx(data, "short.idx")


def test_read_idx_rejects_truncated_header():
    with pytest.raises(DataError):
        read_idx(struct.pack(">I", 0x00000803) + b"\0\0\0\x02", "cut.idx")
