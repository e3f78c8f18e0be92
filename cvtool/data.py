"""Finding images on disk: labeled ImageFolder trees and flat Kaggle-style test folders.

Everything here is deterministic: classes and files come out in natural-sort order
("img2" before "img10"), and splits are seeded.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cvtool.errors import CvtoolError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "FolderScan",
    "LabeledSamples",
    "natural_key",
    "list_images",
    "scan_image_folder",
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


@dataclass
class FolderScan:
    """Image files found under a folder, and what was passed over (counted, never silent)."""

    files: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def list_images(root: str | os.PathLike, recursive: bool = False) -> FolderScan:
    """Image files in `root` (optionally below it), natural-sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    scan = FolderScan()
    walker = os.walk(root) if recursive else [(str(root), None, None)]
    for dirpath, dirnames, _ in walker:
        if dirnames is not None:
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        with os.scandir(dirpath) as it:
            for entry in it:
                if _is_hidden(entry.name):
                    scan.skip("hidden file")
                    continue
                is_dir = entry.is_dir()
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    if not is_dir:
                        scan.skip("not an image extension")
                    continue
                if is_dir:
                    if not recursive:  # when recursing, os.walk visits it as a folder
                        scan.skip("directory named like an image")
                    continue
                if not entry.is_file():
                    # A FIFO or device would block or never end; a dangling link is kept so
                    # that it is reported as a failed image rather than silently dropped.
                    if not entry.is_symlink():
                        scan.skip("not a regular file")
                        continue
                scan.files.append(Path(entry.path))
    scan.files.sort(key=lambda p: natural_key(p.relative_to(root).as_posix()))
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
    for d in folders:
        scan = list_images(d, recursive=True)
        out.paths.extend(scan.files)
        out.labels.extend([index[d.name]] * len(scan.files))
        for reason, n in scan.skipped.items():
            out.skipped[reason] = out.skipped.get(reason, 0) + n
    if not out.paths:
        raise DataError(f"{root}: class folders contain no image files")
    return out


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
