"""`cvtool data split`: labeled images in any layout → OUT/train|val|test/<class>/ and OUT/split.csv.

The source is read by `cvtool.data.labeled_files` (class folders, an id,label CSV or a file-name
pattern) and split per class by `cvtool.data.stratified_split3`, seeded. Files are hard-linked by
default (instant, no space used; both folders must be on one filesystem), else symlinked or
copied; they keep their names, and a name that two source files share within one output folder
is made unique (and reported). OUT is built in a temporary folder beside it and renamed into
place at the end: a failed or interrupted split leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import random
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from cvtool.atomic import atomic_write_csv
from cvtool.data import DataError, LabeledSamples, LabelSource, labeled_files, stratified_split3

__all__ = ["LINK_MODES", "SPLITS", "LinkMode", "SplitResult", "class_folder", "split_dataset"]

LinkMode = Literal["hard", "symlink", "copy"]
LINK_MODES: tuple[str, ...] = get_args(LinkMode)
SPLITS = ("train", "val", "test")


@dataclass
class SplitResult:
    """What `split_dataset` wrote in `out`, and what it had to decide on the way."""

    out: Path
    counts: dict[str, dict[str, int]]  # split → class → files (splits and classes with files)
    samples: LabeledSamples  # the source as read: classes, and what did not match
    link: LinkMode
    short_classes: dict[str, int] = field(default_factory=dict)  # --per-class: fewer files, all kept
    renamed: list[tuple[Path, str]] = field(default_factory=list)  # source → its path in OUT

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


def class_folder(name: str) -> str:
    """A class name as one folder name: separators and control characters become "_", and a
    leading dot too (ImageFolder readers skip hidden folders)."""
    s = re.sub(r"[/\\\x00-\x1f]", "_", name)
    return "_" + s[1:] if s.startswith(".") else s or "_"


def _unique(name: str, used: set[str]) -> str:
    if name not in used:
        return name
    stem, ext = os.path.splitext(name)
    k = 2
    while f"{stem}_{k}{ext}" in used:
        k += 1
    return f"{stem}_{k}{ext}"


def _place(src: Path, dest: Path, link: str, out: Path) -> None:
    if link == "copy":
        shutil.copy2(src, dest)
    elif link == "symlink":
        os.symlink(os.path.abspath(src), dest)
    else:
        try:
            os.link(src, dest)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            why = "they are on different filesystems" if e.errno == errno.EXDEV else e.strerror
            raise DataError(
                f"cannot hard-link {src} into {out}: {why}; use --link copy or --link symlink"
            ) from None


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: not empty; give a new or empty folder to split into")


def _pick(samples: LabeledSamples, per_class: int | None, seed: int) -> tuple[list[int], dict[str, int]]:
    """Indices of the samples to split: all, or a seeded random `per_class` of each class."""
    if per_class is None:
        return list(range(len(samples))), {}
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(samples.labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    short: dict[str, int] = {}
    for y in sorted(by_class):
        idx = by_class[y]
        if len(idx) < per_class:
            short[samples.classes[y]] = len(idx)
            chosen.extend(idx)
        else:
            chosen.extend(rng.sample(idx, per_class))
    return sorted(chosen), short


def split_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    labels: LabelSource | None = None,
    val: float = 0.15,
    test: float = 0.15,
    per_class: int | None = None,
    seed: int = 0,
    link: LinkMode = "hard",
    log: Callable[[str], None] | None = None,
) -> SplitResult:
    """Split the labeled images of `src` into `out`/train|val|test/<class>/ plus `out`/split.csv
    (file in OUT, class, split, source), stratified and seeded.

    `per_class` first takes a random N of each class (a class with fewer keeps all; listed in the
    result). A split whose fraction is 0 gets no folder. Refuses an `out` that is not empty.
    """
    out = Path(out)
    if link not in LINK_MODES:
        raise DataError(f"--link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"--val {val} and --test {test}: each in [0, 1), together below 1")
    if per_class is not None and per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    _check_out(out)
    samples = labeled_files(src, None, labels)
    if log is not None:
        log(f"labels: {samples.describe()}")
        for line in samples.notes():
            log(f"  {line}")
    folders = [class_folder(c) for c in samples.classes]
    if len(set(folders)) < len(folders):
        same = sorted({f for f in folders if folders.count(f) > 1})
        raise DataError(f"{src}: classes that differ only in / or \\ share a folder name: {same[:3]}")
    chosen, short = _pick(samples, per_class, seed)
    parts = stratified_split3([samples.labels[i] for i in chosen], val, test, seed)
    result = SplitResult(out=out, counts={}, samples=samples, link=link, short_classes=short)
    rows: list[list[str]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside OUT (one filesystem, so the rename is instant); mkdir, unlike mkdtemp, keeps the umask.
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for split, positions in zip(SPLITS, parts, strict=True):
            # Class by class, each in source order: the names made unique are the same every run.
            members = sorted((samples.labels[chosen[k]], chosen[k]) for k in positions)
            used: dict[int, set[str]] = {}
            for y, i in members:
                path, cls = samples.paths[i], samples.classes[y]
                if y not in used:
                    used[y] = set()
                    (tmp / split / folders[y]).mkdir(parents=True)
                name = _unique(path.name, used[y])
                used[y].add(name)
                rel = f"{split}/{folders[y]}/{name}"
                _place(path, tmp / rel, link, out)
                if name != path.name:
                    result.renamed.append((path, rel))
                rows.append([rel, cls, split, str(path)])
                counts = result.counts.setdefault(split, {})
                counts[cls] = counts.get(cls, 0) + 1
        atomic_write_csv(tmp / "split.csv", ["file", "class", "split", "source"], rows)
        if out.exists():
            out.rmdir()  # empty (checked above): the finished folder takes its place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
