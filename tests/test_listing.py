"""The one image lister (cvtool.data.walk_images) behind predict, evaluate and training: what it keeps,
what it passes over and counts, and how it follows links without looping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_predict import touch_files

from cvtool.data import labeled_files, list_images, scan_image_folder, walk_images
from cvtool.infer.sources import list_items

LOOP = "link to a folder already listed"


def test_walk_yields_relative_posix_paths_lazily(tmp_path: Path):
    touch_files(tmp_path, "a/1.png", "b/c/2.jpg", "3.png")
    skipped: dict[str, int] = {}
    it = walk_images(tmp_path, recursive=True, skipped=skipped)
    assert iter(it) is it  # a generator: nothing is listed up front
    assert isinstance(next(it), str)
    assert sorted([*it, *walk_images(tmp_path, recursive=False)]) == sorted(["a/1.png", "b/c/2.jpg", "3.png"])


def test_fifo_is_not_a_regular_file(tmp_path: Path):
    touch_files(tmp_path, "1.png")
    os.mkfifo(tmp_path / "x.png")
    os.symlink("x.png", tmp_path / "via_link.png")  # a link to the FIFO blocks just the same
    skipped: dict[str, int] = {}
    assert list(walk_images(tmp_path, skipped=skipped)) == ["1.png"]
    assert skipped == {"not a regular file": 2}
    items = list_items(tmp_path)
    assert items.relpaths == ["1.png"] and items.skipped == {"not a regular file": 2}


def test_dangling_and_self_looping_links_are_kept_to_be_reported_unreadable(tmp_path: Path):
    touch_files(tmp_path, "1.png")
    os.symlink("gone.png", tmp_path / "2.png")
    os.symlink("3.png", tmp_path / "3.png")  # ELOOP when followed
    for recursive in (False, True):
        skipped: dict[str, int] = {}
        assert sorted(walk_images(tmp_path, recursive, skipped)) == ["1.png", "2.png", "3.png"]
        assert skipped == {}
    assert list_items(tmp_path).ids == ["1", "2", "3"]


def test_a_link_loop_is_skipped_and_counted(tmp_path: Path):
    touch_files(tmp_path, "1.png", "sub/2.png")
    os.symlink(".", tmp_path / "loop")
    os.symlink("..", tmp_path / "sub" / "up")
    skipped: dict[str, int] = {}
    assert sorted(walk_images(tmp_path, recursive=True, skipped=skipped)) == ["1.png", "sub/2.png"]
    assert skipped == {LOOP: 2}
    items = list_items(tmp_path, recursive=True, id_from="relpath")
    assert items.ids == ["1.png", "sub/2.png"] and items.skipped == {LOOP: 2}


def test_links_to_other_folders_are_followed_once_and_real_paths_win(tmp_path: Path):
    outside = touch_files(tmp_path / "outside", "9.png")
    root = touch_files(tmp_path / "root", "a/1.png")
    # Links that sort before the real folder they point to: the real path is kept all the same.
    os.symlink(root / "a", root / "0_to_a")
    os.symlink(outside, root / "ext1")
    os.symlink(outside, root / "ext2")
    skipped: dict[str, int] = {}
    assert sorted(walk_images(root, recursive=True, skipped=skipped)) == ["a/1.png", "ext1/9.png"]
    assert skipped == {LOOP: 2}
    # Not recursing, a link to a folder is a folder: not read, not counted.
    assert list(walk_images(root, skipped=(flat := {}))) == [] and flat == {}


def test_list_images_keeps_its_rules(tmp_path: Path):
    touch_files(tmp_path, "10.png", "2.png", ".hidden.png", "notes.txt", "sub/3.png")
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    scan = list_images(tmp_path)
    assert [p.name for p in scan.files] == ["2.png", "10.png"]
    assert scan.skipped == {
        "hidden file": 1,
        "not an image extension": 1,
        "directory named like an image": 1,
        "not a regular file": 1,
    }
    deep = list_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep.files] == ["2.png", "10.png", "sub/3.png"]
    assert "directory named like an image" not in deep.skipped


def test_image_folder_scan_skips_loops_and_links_into_other_classes(tmp_path: Path):
    touch_files(tmp_path, "cat/1.png", "cat/deep/2.png", "dog/3.png")
    os.symlink(".", tmp_path / "cat" / "loop")
    os.symlink("../../dog", tmp_path / "cat" / "deep" / "dogs")  # would label dogs as cats
    s = scan_image_folder(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in s.paths]
    assert rel == ["cat/1.png", "cat/deep/2.png", "dog/3.png"]
    assert s.labels == [0, 0, 1]
    assert s.skipped == {LOOP: 2}


def test_labeled_files_image_folder_and_flat_csv(tmp_path: Path):
    tree = touch_files(tmp_path / "tree", "dog/1.png", "cat/2.png", "cat/10.png")
    os.symlink(".", tree / "cat" / "loop")
    s = labeled_files(tree, ["cat", "dog"])
    assert [p.relative_to(tree).as_posix() for p in s.paths] == ["cat/2.png", "cat/10.png", "dog/1.png"]
    assert s.labels == [0, 0, 1] and s.skipped == {LOOP: 1} and s.origin == {"layout": "folders"}

    flat = touch_files(tmp_path / "flat", "1.png", "2.png", "3.png", "readme.txt")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n1,dog\n2,cat\n4,cat\n")
    s = labeled_files(flat, ["cat", "dog"], labels)
    assert [p.name for p in s.paths] == ["1.png", "2.png"] and s.labels == [1, 0]
    assert s.skipped == {
        "not an image extension": 1,
        "image files without a label": 1,
        "ids without an image file": 1,
    }
    assert s.examples == {"image files without a label": ["3.png"], "ids without an image file": ["4"]}


def test_labeled_files_errors(tmp_path: Path):
    from cvtool.data import DataError

    flat = touch_files(tmp_path / "flat", "1.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n1,zebra\n")
    with pytest.raises(DataError, match=r"labels\.csv: label\(s\) \['zebra'\] are not classes"):
        labeled_files(flat, ["cat", "dog"], labels)
    labels.write_text("id,label\n7,cat\n")
    with pytest.raises(DataError, match="no image file matches an id of") as e:
        labeled_files(flat, ["cat", "dog"], labels)
    assert "by stem or name (ids such as 7; files such as 1.png)" in str(e.value)
