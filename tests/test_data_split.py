"""`cvtool data split`: stratified, seeded train/val/test folders from any layout, by hard link,
symlink or copy, with split.csv; nothing written into a folder that is not empty."""

from __future__ import annotations

import csv
import errno
import os
from collections import Counter
from pathlib import Path

import pytest
from helpers_predict import touch_files
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.data import DataError, LabelSource, scan_image_folder
from cvtool.data_split import class_folder, split_dataset

runner = CliRunner()
SIZES = {"cat": 40, "dog": 27, "bird": 9}


def _tree(root: Path) -> Path:
    for cls, n in SIZES.items():
        touch_files(root, *(f"{cls}/{i}.png" for i in range(n)))
    return root


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "split.csv").open()))


def test_counts_per_split_and_class_and_no_file_twice(tmp_path: Path):
    src = _tree(tmp_path / "src")
    r = split_dataset(src, tmp_path / "out", val=0.15, test=0.15, seed=1)
    for cls, n in SIZES.items():
        for split, fraction in (("val", 0.15), ("test", 0.15)):
            assert abs(r.counts[split][cls] - round(n * fraction)) <= 1
        assert sum(r.counts[s][cls] for s in ("train", "val", "test")) == n
    rows = _rows(tmp_path / "out")
    assert list(rows[0]) == ["file", "class", "split", "source"]
    sources = [row["source"] for row in rows]
    assert len(sources) == len(set(sources)) == sum(SIZES.values())  # each file once, in one split
    for row in rows:
        assert row["file"] == f"{row['split']}/{row['class']}/{Path(row['source']).name}"
        assert (tmp_path / "out" / row["file"]).is_file()
    # The folders are ImageFolder trees with the same classes.
    for split in ("train", "val", "test"):
        s = scan_image_folder(tmp_path / "out" / split)
        assert Counter(s.classes[y] for y in s.labels) == r.counts[split]


def test_same_seed_same_split_other_seed_another(tmp_path: Path):
    src = _tree(tmp_path / "src")
    split_dataset(src, tmp_path / "a", seed=3)
    split_dataset(src, tmp_path / "b", seed=3)
    split_dataset(src, tmp_path / "c", seed=4)
    a, b, c = ((tmp_path / x / "split.csv").read_text() for x in "abc")
    assert a == b and a != c


def test_link_modes(tmp_path: Path):
    src = _tree(tmp_path / "src")
    for mode in ("hard", "symlink", "copy"):
        out = tmp_path / mode
        split_dataset(src, out, seed=0, link=mode)  # type: ignore[arg-type]
        row = _rows(out)[0]
        dest, source = out / row["file"], Path(row["source"])
        assert dest.read_bytes() == source.read_bytes()
        assert dest.is_symlink() == (mode == "symlink")
        assert os.path.samefile(dest, source) == (mode != "copy")  # a hard link: the same inode
        if mode == "hard":
            assert os.stat(dest, follow_symlinks=False).st_ino == source.stat().st_ino
        if mode == "symlink":
            assert Path(os.readlink(dest)).is_absolute()


def test_refuses_a_folder_that_is_not_empty_and_leaves_it_alone(tmp_path: Path):
    src = _tree(tmp_path / "src")
    out = touch_files(tmp_path / "out", "keep.txt")
    with pytest.raises(DataError, match="not empty"):
        split_dataset(src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = runner.invoke(app, ["data", "split", str(src), str(out)])
    assert r.exit_code == 2 and "not empty" in r.output
    (out / "keep.txt").unlink()
    split_dataset(src, out)  # an empty folder is fine
    assert (out / "split.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cross_filesystem_hard_link_says_what_to_do_and_leaves_nothing(tmp_path: Path, monkeypatch):
    src = _tree(tmp_path / "src")

    def exdev(*_args, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", exdev)
    with pytest.raises(DataError, match="different filesystems; use --link copy or --link symlink"):
        split_dataset(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no temporary folder


def test_per_class_takes_n_of_each_and_says_which_had_fewer(tmp_path: Path):
    src = _tree(tmp_path / "src")
    r = split_dataset(src, tmp_path / "out", val=0.2, test=0.0, per_class=20, seed=0)
    totals = {cls: sum(r.counts[s].get(cls, 0) for s in r.counts) for cls in SIZES}
    assert totals == {"cat": 20, "dog": 20, "bird": 9}
    assert r.short_classes == {"bird": 9}
    assert r.counts["val"] == {"cat": 4, "dog": 4, "bird": round(9 * 0.2)}
    assert not (tmp_path / "out" / "test").exists()  # --test 0: no test/ folder
    other = split_dataset(src, tmp_path / "out2", val=0.2, test=0.0, per_class=20, seed=1)
    assert {row["source"] for row in _rows(tmp_path / "out")} != {
        row["source"] for row in _rows(tmp_path / "out2")
    }
    assert other.short_classes == {"bird": 9}


def test_csv_layout_with_a_name_clash_and_the_command_line(tmp_path: Path):
    # The CSV layout reads sub-folders: a/1.png and b/1.png, both cats, meet in one class folder.
    src = touch_files(
        tmp_path / "src", "a/1.png", "b/1.png", *(f"{i}.png" for i in range(2, 12)), "stray.png"
    )
    labels = tmp_path / "trainLabels.csv"
    rows = [("a/1", "cat"), ("b/1", "cat")] + [(str(i), "cat" if i % 2 else "dog") for i in range(2, 12)]
    labels.write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in rows) + "99,dog\n")
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "data",
            "split",
            str(src),
            str(out),
            "--labels",
            str(labels),
            "--val",
            "0.25",
            "--test",
            "0",
            "--link",
            "copy",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "ids without an image file: 1 (e.g. 99)" in r.output
    assert "image files without a label: 1 (e.g. stray.png)" in r.output
    files = {row["source"]: row["file"] for row in _rows(out)}
    clash = sorted(Path(files[str(src / x)]).name for x in ("a/1.png", "b/1.png"))
    assert clash == ["1.png", "1_2.png"]
    assert "1 file(s) renamed where two sources share a name in one class folder" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["split.csv", "train", "val"]
    assert len(files) == 12


def test_pattern_layout_split(tmp_path: Path):
    src = touch_files(tmp_path / "src", *(f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(10)), "x.png")
    r = split_dataset(src, tmp_path / "out", LabelSource(pattern=r"^(cat|dog)\."), val=0.2, test=0.2)
    assert r.counts == {s: {"cat": n, "dog": n} for s, n in (("train", 6), ("val", 2), ("test", 2))}
    assert r.samples.examples == {"file names not matching the pattern": ["x.png"]}
    assert {Path(row["file"]).parent.name for row in _rows(tmp_path / "out")} == {"cat", "dog"}


def test_bad_fractions_and_class_folder_names(tmp_path: Path):
    src = _tree(tmp_path / "src")
    r = runner.invoke(app, ["data", "split", str(src), str(tmp_path / "o"), "--val", "0.5", "--test", "0.5"])
    assert r.exit_code == 2 and "keep their sum below 1" in r.output
    with pytest.raises(DataError, match="together below 1"):
        split_dataset(src, tmp_path / "o", val=0.6, test=0.4)
    assert class_folder("T-shirt/top") == "T-shirt_top" and class_folder(".hidden") == "_hidden"
    assert class_folder("Bombay cat") == "Bombay cat"
