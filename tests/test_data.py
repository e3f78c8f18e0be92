"""Finding images: natural order, skipped entries, ImageFolder scans, label CSVs, splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cvtool.data import (
    DataError,
    list_images,
    natural_key,
    read_labels_csv,
    scan_image_folder,
    stratified_split,
    stratified_split3,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- natural_key --------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    assert natural_key("2") < natural_key("10")
    assert natural_key("img2.png") < natural_key("img10.png")
    assert sorted(["10.png", "1.png", "2.png", "100.png", "20.png"], key=natural_key) == [
        "1.png",
        "2.png",
        "10.png",
        "20.png",
        "100.png",
    ]


def test_natural_key_is_case_insensitive():
    assert natural_key("Apple") == natural_key("apple")
    assert sorted(["b", "A", "C", "a2", "a10"], key=natural_key) == ["A", "a2", "a10", "b", "C"]


def test_natural_key_mixed_tokens_comparable():
    names = ["x1y2", "x1y10", "1x", "x", "x01y3"]
    assert sorted(names, key=natural_key) == ["1x", "x", "x1y2", "x01y3", "x1y10"]


# --- list_images --------------------------------------------------------------------------------


def test_list_images_skips_and_counts(tmp_path: Path):
    for name in ["10.png", "2.jpg", "1.PNG", "b.webp", "A.tif"]:
        _touch(tmp_path / name)
    _touch(tmp_path / ".DS_Store")
    _touch(tmp_path / "._a.png")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "labels.csv")
    (tmp_path / "x.png").mkdir()
    (tmp_path / "subdir").mkdir()  # a plain directory: ignored, not counted
    scan = list_images(tmp_path)
    assert [p.name for p in scan.files] == ["1.PNG", "2.jpg", "10.png", "A.tif", "b.webp"]
    assert all(p.parent == tmp_path for p in scan.files)
    assert scan.skipped == {
        "hidden file": 2,
        "not an image extension": 2,
        "directory named like an image": 1,
    }


def test_list_images_recursive_natural_order(tmp_path: Path):
    _touch(tmp_path / "a10" / "1.png")
    _touch(tmp_path / "a2" / "3.png")
    _touch(tmp_path / "a2" / "20.png")
    _touch(tmp_path / "0.png")
    _touch(tmp_path / ".hidden" / "5.png")
    scan = list_images(tmp_path, recursive=True)
    rel = [p.relative_to(tmp_path).as_posix() for p in scan.files]
    assert rel == ["0.png", "a2/3.png", "a2/20.png", "a10/1.png"]
    assert list_images(tmp_path).files == [tmp_path / "0.png"]


def test_list_images_not_a_directory(tmp_path: Path):
    with pytest.raises(DataError, match="not a directory"):
        list_images(tmp_path / "missing")


# --- scan_image_folder --------------------------------------------------------------------------


def _make_tree(root: Path, layout: dict[str, int]) -> Path:
    for cls, n in layout.items():
        for i in range(n):
            _touch(root / cls / f"{i}.png")
    return root


def test_scan_image_folder_classes_and_labels(tmp_path: Path):
    _make_tree(tmp_path, {"class10": 1, "class2": 2, "Bird": 3})
    _touch(tmp_path / "class2" / "readme.txt")
    _touch(tmp_path / ".git" / "x.png")  # hidden folder: not a class
    s = scan_image_folder(tmp_path)
    assert s.classes == ["Bird", "class2", "class10"]
    assert len(s) == 6
    assert s.labels == [0, 0, 0, 1, 1, 2]
    for p, y in zip(s.paths, s.labels, strict=True):
        assert p.parent.name == s.classes[y]
    assert [p.name for p in s.paths[:3]] == ["0.png", "1.png", "2.png"]
    assert s.skipped == {"not an image extension": 1}


def test_scan_image_folder_given_classes(tmp_path: Path):
    _make_tree(tmp_path, {"dog": 2, "cat": 1})
    s = scan_image_folder(tmp_path, classes=["bird", "cat", "dog"])
    # Labels index the given list; "bird" has no folder and that is fine.
    assert s.classes == ["bird", "cat", "dog"]
    assert sorted(Counter(s.labels).items()) == [(1, 1), (2, 2)]
    for p, y in zip(s.paths, s.labels, strict=True):
        assert p.parent.name == s.classes[y]


def test_scan_image_folder_unknown_folder_raises(tmp_path: Path):
    _make_tree(tmp_path, {"dog": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        scan_image_folder(tmp_path, classes=["cat", "dog"])


def test_scan_image_folder_empty_raises(tmp_path: Path):
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_image_folder(tmp_path)


# --- read_labels_csv ----------------------------------------------------------------------------


def test_read_labels_csv(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffid,label\n1, cat \n2,dog\n\n10,cat\n", encoding="utf-8")
    assert read_labels_csv(path) == {"1": "cat", "2": "dog", "10": "cat"}


def test_read_labels_csv_counts_duplicates_and_keeps_the_first(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("id,label\n1,cat\n2,dog\n1,bird\n2,dog\n2,dog\n3,\n,cat\n")
    table = read_labels_csv(path)
    assert table == {"1": "cat", "2": "dog"}
    assert table.skipped == {
        "duplicate ids with another label (first row kept)": 1,
        "duplicate ids, same label": 2,
        "ids with an empty label": 1,
        "rows without an id": 1,
    }
    assert table.examples["duplicate ids, same label"] == ["2", "2"]
    assert table.examples["rows without an id"] == ["line 8"]


def test_read_labels_csv_named_columns(tmp_path: Path):
    path = tmp_path / "meta.csv"
    path.write_text("lesion,image_id,dx\nL1,img1,nv\nL2,img2,mel\n")
    table = read_labels_csv(path, id_col="image_id", label_col="dx")
    assert dict(table) == {"img1": "nv", "img2": "mel"}
    assert (table.id_col, table.label_col) == ("image_id", "dx")
    # Only the id column named: the label is the first other column (of the first two).
    assert dict(read_labels_csv(path, id_col="image_id")) == {"img1": "L1", "img2": "L2"}
    with pytest.raises(
        DataError, match=r"meta\.csv: no column 'label' \(--label-col\); the header is: lesion,image_id,dx"
    ):
        read_labels_csv(path, label_col="label")
    with pytest.raises(DataError, match="both be column 'dx'"):
        read_labels_csv(path, id_col="dx", label_col="dx")


def test_read_labels_csv_bad_files(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read"):
        read_labels_csv(tmp_path / "missing.csv")
    header_only = tmp_path / "h.csv"
    header_only.write_text("id,label\n")
    with pytest.raises(DataError, match="expected a header"):
        read_labels_csv(header_only)
    short = tmp_path / "s.csv"
    short.write_text("id,label\n1,a\n2\n")
    with pytest.raises(DataError, match=r"s\.csv:3: expected id,label"):
        read_labels_csv(short)


# --- stratified_split ---------------------------------------------------------------------------


def test_stratified_split_deterministic_disjoint_covering():
    labels = [i % 3 for i in range(30)] + [3, 3] + [4]
    train, val = stratified_split(labels, 0.2, seed=7)
    assert (train, val) == stratified_split(labels, 0.2, seed=7)
    assert stratified_split(labels, 0.2, seed=8) != (train, val)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(labels)))
    assert train == sorted(train) and val == sorted(val)
    # Every class with at least two samples appears in validation; a singleton stays in train.
    val_classes = {labels[i] for i in val}
    assert val_classes == {0, 1, 2, 3}
    assert 32 in train  # the single class-4 sample


def test_stratified_split_small_class_keeps_one_in_train():
    labels = [0, 0, 1, 1, 1]
    train, val = stratified_split(labels, 0.9, seed=0)
    assert Counter(labels[i] for i in train) == {0: 1, 1: 1}
    assert Counter(labels[i] for i in val) == {0: 1, 1: 2}


@pytest.mark.parametrize("fraction", [0.1, 0.9])
def test_stratified_split_proportions(fraction):
    labels = [c for c in range(4) for _ in range(100)]
    train, val = stratified_split(labels, fraction, seed=0)
    n_val = round(100 * fraction)
    assert Counter(labels[i] for i in val) == {c: n_val for c in range(4)}
    assert Counter(labels[i] for i in train) == {c: 100 - n_val for c in range(4)}


def test_stratified_split_rejects_bad_fraction():
    for f in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            stratified_split([0, 1], f)


def test_natural_key_superscript_digits_do_not_crash():
    assert sorted(["2²", "10", "2"], key=natural_key) == ["2", "2²", "10"]


def test_stratified_split3_is_stratified_split_when_test_is_zero():
    labels = [i % 4 for i in range(97)] + [4, 4]
    for seed in range(3):
        train, val, test = stratified_split3(labels, 0.2, 0.0, seed)
        assert (train, val) == stratified_split(labels, 0.2, seed) and test == []


@pytest.mark.parametrize("val,test", [(0.15, 0.15), (0.1, 0.3), (0.0, 0.25), (0.3, 0.0)])
def test_stratified_split3_counts_per_class(val, test):
    sizes = {0: 100, 1: 37, 2: 8, 3: 2}
    labels = [c for c, n in sizes.items() for _ in range(n)]
    parts = stratified_split3(labels, val, test, seed=5)
    assert sorted(sum(parts, [])) == list(range(len(labels)))  # disjoint and covering
    for c, n in sizes.items():
        got = [sum(labels[i] == c for i in part) for part in parts]
        for k, fraction in ((1, val), (2, test)):
            assert abs(got[k] - round(n * fraction)) <= 1
            assert (got[k] == 0) == (fraction == 0 or (k == 2 and n == 2 and val > 0))
        assert got[0] >= 1


def test_stratified_split3_rejects_bad_fractions():
    for val, test in ((0.5, 0.5), (-0.1, 0.2), (0.2, 1.0)):
        with pytest.raises(ValueError):
            stratified_split3([0, 1], val, test)
