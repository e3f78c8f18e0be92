"""Finding images on disk: labeled ImageFolder trees and flat Kaggle-style test folders.

`walk_images` is the one lister of image files (predict, evaluate and training all use it): regular
files with an image extension, lazily, with what it passes over counted. Everything here is
deterministic: classes and files come out in natural-sort order ("img2" before "img10"), and
splits are seeded.
"""

from __future__ import annotations

import csv
import heapq
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cvtool.errors import CvtoolError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "FolderScan",
    "LabeledSamples",
    "natural_key",
    "walk_images",
    "list_images",
    "scan_image_folder",
    "labeled_files",
    "read_labels_csv",
    "stratified_split",
]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class DataError(CvtoolError, ValueError):
    """A dataset folder or label file is unusable; the message names it."""


def natural_key(s: str) -> tuple:
    """Sort key that orders embedded numbers by value: "2.png" < "10.png"."""
    return tuple(int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", s))


def _is_hidden(name: str) -> bool:
    # ".DS_Store", "._foo.jpg" (macOS resource forks), ".git", …
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _kept_as_file(entry: os.DirEntry[str]) -> bool:
    """A name that is not a regular file: keep it only when it cannot be read at all (a dangling or
    self-looping link), so that it is reported as an unreadable image rather than dropped.

    A FIFO, socket or device (or a link to one) is passed over: reading it would block or never end.
    """
    if not entry.is_symlink():
        return False
    try:
        os.stat(entry.path)
    except OSError:
        return True
    return False


def _dir_key(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def walk_images(
    root: str | os.PathLike,
    recursive: bool = False,
    skipped: dict[str, int] | None = None,
    *,
    listed: set[tuple[int, int]] | None = None,
) -> Iterator[str]:
    """POSIX paths (relative to `root`) of the image files in it, or below it; lazily, unsorted.

    What is passed over is counted into `skipped` (reason → count). When recursing, a folder is
    listed once: a link to a folder already listed (a loop, or a second way in) is counted, not
    followed. `listed` holds the (st_dev, st_ino) of folders already listed, shared between calls.
    """
    top = os.fspath(root)
    skipped = {} if skipped is None else skipped
    listed = set() if listed is None else listed

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    try:
        listed.add(_dir_key(top))
    except OSError as e:
        raise DataError(f"{top}: not a directory ({e.strerror or e})") from None
    # Real folders first, links to folders after, in name order: a folder reachable both ways is
    # listed under its real path, whatever order the directory entries come in.
    pending: list[str] = [""]
    links: list[tuple[tuple, str]] = []  # a heap: the first by name comes out first
    while pending or links:
        if not pending:
            rel = heapq.heappop(links)[1]
            try:
                key = _dir_key(os.path.join(top, rel))
            except OSError:  # gone since it was seen
                skip("unreadable folder")
                continue
            if key in listed:
                skip("link to a folder already listed")
                continue
            listed.add(key)
            pending.append(rel)
        rel_dir = pending.pop()
        try:
            it = os.scandir(os.path.join(top, rel_dir) if rel_dir else top)
        except OSError as e:
            if not rel_dir:
                raise DataError(f"{top}: cannot read: {e.strerror or e}") from None
            skip("unreadable folder")
            continue
        with it:
            for entry in it:
                name = entry.name
                if _is_hidden(name):
                    skip("hidden file")
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                try:
                    is_dir = entry.is_dir()
                except OSError:  # a link that loops on itself: not a folder
                    is_dir = False
                if is_dir:
                    if not recursive:
                        if _is_image_name(name):
                            skip("directory named like an image")
                    elif entry.is_symlink():
                        heapq.heappush(links, (natural_key(rel), rel))
                    else:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:  # gone since it was seen
                            skip("unreadable folder")
                            continue
                        key = (st.st_dev, st.st_ino)
                        if key in listed:  # reached again below a followed link
                            skip("folder already listed")
                        else:
                            listed.add(key)
                            pending.append(rel)
                    continue
                if not _is_image_name(name):
                    skip("not an image extension")
                    continue
                try:
                    regular = entry.is_file()
                except OSError:  # a link that loops on itself
                    regular = False
                if regular or _kept_as_file(entry):
                    yield rel
                else:
                    skip("not a regular file")


@dataclass
class FolderScan:
    """Image files found under a folder, and what was passed over (counted, never silent)."""

    files: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def list_images(
    root: str | os.PathLike, recursive: bool = False, *, listed: set[tuple[int, int]] | None = None
) -> FolderScan:
    """Image files in `root` (optionally below it), natural-sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    scan = FolderScan()
    rels = sorted(walk_images(root, recursive, scan.skipped, listed=listed), key=natural_key)
    scan.files = [root / rel for rel in rels]
    return scan


@dataclass
class LabeledSamples:
    """Image paths with integer labels indexing `classes`."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def scan_image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> LabeledSamples:
    """Scan an ImageFolder tree: root/<class>/**/<image>.

    With `classes` (e.g. a model card's), folder names are matched to them by name and the labels
    index that list; a folder that is not one of them is an error, absent classes are fine.
    Without, the classes are the natural-sorted folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    folders = sorted(
        (d for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name)),
        key=lambda d: natural_key(d.name),
    )
    if not folders:
        raise DataError(f"{root}: no class folders found (expected {root}/<class>/<image files>)")
    if classes is None:
        classes = [d.name for d in folders]
    index = {name: i for i, name in enumerate(classes)}
    unknown = [d.name for d in folders if d.name not in index]
    if unknown:
        raise DataError(
            f"{root}: folder(s) {unknown[:5]} are not classes of the model "
            f"(model classes: {list(classes)[:10]}{' …' if len(classes) > 10 else ''})"
        )
    out = LabeledSamples(paths=[], labels=[], classes=list(classes))
    # Every class folder counts as listed from the start: a link from one class into another is
    # passed over rather than labelling the other class's images as this one.
    listed = {_dir_key(d) for d in folders}
    for d in folders:
        scan = list_images(d, recursive=True, listed=listed)
        out.paths.extend(scan.files)
        out.labels.extend([index[d.name]] * len(scan.files))
        for reason, n in scan.skipped.items():
            out.skipped[reason] = out.skipped.get(reason, 0) + n
    if not out.paths:
        raise DataError(f"{root}: class folders contain no image files")
    return out


def labeled_files(
    data: str | os.PathLike, class_names: list[str], labels_csv: str | os.PathLike | None = None
) -> tuple[list[Path], list[int], dict[str, int]]:
    """(paths, label indices, skipped counts) for an ImageFolder tree or a flat folder + CSV."""
    index = {name: i for i, name in enumerate(class_names)}
    if labels_csv is None:
        s = scan_image_folder(data, classes=class_names)
        return s.paths, s.labels, dict(s.skipped)
    labels = read_labels_csv(labels_csv)
    unknown = sorted({v for v in labels.values() if v not in index})
    if unknown:
        raise DataError(
            f"{labels_csv}: label(s) {unknown[:5]} are not classes of the model "
            f"(model classes: {class_names[:10]}{' …' if len(class_names) > 10 else ''})"
        )
    scan = list_images(data, recursive=False)
    skipped = dict(scan.skipped)
    paths, ys = [], []
    for p in scan.files:
        if p.stem in labels:
            paths.append(p)
            ys.append(index[labels[p.stem]])
        else:
            skipped["no label in CSV"] = skipped.get("no label in CSV", 0) + 1
    missing = len(labels) - len(paths)
    if missing > 0:
        skipped["label without an image file"] = missing
    if not paths:
        raise DataError(f"{data}: no image file's stem matches an id in {labels_csv}")
    return paths, ys, skipped


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read an `id,label` CSV (header required; first two columns used) → {id: label}."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header and rows of at least two columns (id,label)")
    labels: dict[str, str] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2:
            raise DataError(f"{path}:{lineno}: expected id,label")
        key = row[0].strip()
        if key in labels:
            raise DataError(f"{path}:{lineno}: duplicate id {key!r}")
        labels[key] = row[1].strip()
    return labels


def stratified_split(
    labels: Iterable[int], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Seeded stratified split of sample indices → (train, val).

    Each class contributes round(n_c * val_fraction) samples to validation (at least one when the
    class has two or more samples), so small classes are not left out of validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    train, val = [], []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)
