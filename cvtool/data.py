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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cvtool.errors import CvtoolError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "FolderScan",
    "LabelLayout",
    "LabelSource",
    "LabelTable",
    "LabeledSamples",
    "natural_key",
    "walk_images",
    "list_images",
    "scan_image_folder",
    "file_keys",
    "label_pattern",
    "labeled_files",
    "read_csv_ids",
    "read_labels_csv",
    "stratified_split",
    "stratified_kfold",
    "stratified_split3",
    "true_labels",
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


EXAMPLES = 5  # names kept per kind of mismatch: enough to find the problem, short enough to print

LabelLayout = Literal["folders", "csv", "pattern"]


def _count(
    skipped: dict[str, int], examples: dict[str, list[str]], reason: str, name: str | None = None
) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
    if name is not None:
        names = examples.setdefault(reason, [])
        if len(names) < EXAMPLES:
            names.append(name)


def label_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a --label-pattern; DataError when it is invalid or has no group (the class)."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(f"--label-pattern '{pattern}' is not a valid regular expression: {e}") from None
    if rx.groups < 1:
        raise DataError(
            f"--label-pattern '{pattern}' has no group: put the class in parentheses, e.g. '^(cat|dog)\\.'"
        )
    return rx


@dataclass(frozen=True)
class LabelSource:
    """Where the labels of a folder of images come from.

    Neither `csv` nor `pattern`: class sub-folders (ImageFolder). `csv`: an id,label CSV whose ids
    name files by stem or name (columns `id_col`/`label_col`, else the first two). `pattern`: a
    regex searched in each file name, its first group the class ('^(cat|dog)\\.').
    """

    csv: Path | None = None
    id_col: str | None = None
    label_col: str | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.csv is not None:
            object.__setattr__(self, "csv", Path(self.csv))
        if self.csv is not None and self.pattern is not None:
            raise DataError("--labels and --label-pattern are alternatives: give one")
        if self.csv is None and (self.id_col is not None or self.label_col is not None):
            raise DataError("--id-col and --label-col name columns of a CSV: give --labels FILE.csv too")
        if self.pattern is not None:
            label_pattern(self.pattern)

    @property
    def layout(self) -> LabelLayout:
        return "csv" if self.csv is not None else "pattern" if self.pattern is not None else "folders"


@dataclass
class LabeledSamples:
    """Image paths with integer labels indexing `classes`, and what was passed over: counted by
    reason in `skipped`, the first few of each named in `examples`; nothing is dropped silently."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # Where the labels came from, as the model card's extra["labels"] records it.
    origin: dict[str, str] = field(default_factory=lambda: {"layout": "folders"})
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def skip(self, reason: str, name: str | None = None) -> None:
        _count(self.skipped, self.examples, reason, name)

    def describe(self) -> str:
        """One line: images, classes and where the labels came from."""
        o = self.origin
        where = {
            "folders": "class folders",
            "csv": f"{o.get('file')} (id column {o.get('id_col')!r}, label column {o.get('label_col')!r})",
            "pattern": "file names matching '" + o.get("pattern", "") + "'",
        }.get(o.get("layout", ""), "?")
        return f"{len(self)} labeled images, {len(self.classes)} classes, labels from {where}"

    def notes(self) -> list[str]:
        """One line per kind of file or id passed over: "<reason>: <count> (e.g. a, b, …)"."""
        lines = []
        for reason, n in self.skipped.items():
            names = self.examples.get(reason, [])
            more = ", …" if n > len(names) else ""
            lines.append(f"{reason}: {n}" + (f" (e.g. {', '.join(names)}{more})" if names else ""))
        return lines


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


def file_keys(rel: str) -> tuple[str, ...]:
    """The ids that name a file, most specific first: its relative path with and without the
    extension, its name, its stem ("a/1.png" → "a/1.png", "a/1", "1.png", "1")."""
    name = rel.rsplit("/", 1)[-1]
    stem = os.path.splitext(name)[0] or name
    folder = rel[: len(rel) - len(name)]
    return (rel, folder + stem, name, stem) if folder else (name, stem)


def _as_source(labels: LabelSource | str | os.PathLike | None) -> LabelSource:
    if isinstance(labels, LabelSource):
        return labels
    return LabelSource(csv=None if labels is None else Path(labels))


def _class_list(used: set[str], class_names: Sequence[str] | None, where: str) -> list[str]:
    """Natural-sorted labels found ("2" < "10"), or the given class names, which must cover them."""
    if class_names is None:
        return sorted(used, key=lambda c: (natural_key(c), c))
    unknown = sorted(used - set(class_names), key=natural_key)
    if unknown:
        names = list(class_names)
        raise DataError(
            f"{where}: label(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''} are not classes of the "
            f"model (model classes: {names[:10]}{' …' if len(names) > 10 else ''})"
        )
    return list(class_names)


def labeled_files(
    data: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    labels: LabelSource | str | os.PathLike | None = None,
) -> LabeledSamples:
    """The labeled images of `data`, in the layout `labels` describes (a path: an id,label CSV).

    Class folders: DATA/<class>/**/<image>. CSV or pattern: the image files in DATA and below.
    With `class_names` (a model card's), labels must be among them and index that list; without,
    the classes are the natural-sorted labels found. Ids without a file, files without a label,
    duplicate ids and names that do not match are counted and named, never silently dropped.
    Raises DataError when no image gets a label.
    """
    source, root = _as_source(labels), Path(data)
    if source.layout == "folders":
        s = scan_image_folder(root, classes=class_names)
        s.root = root
        return s
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    out = LabeledSamples(paths=[], labels=[], classes=[], root=root)
    rels = sorted(walk_images(root, recursive=True, skipped=out.skipped), key=natural_key)
    if not rels:
        raise DataError(f"{root}: no image files found")
    found: list[tuple[str, str]] = []  # (relpath, label)
    if source.csv is not None:
        table = read_labels_csv(source.csv, source.id_col, source.label_col)
        out.origin = {"layout": "csv", "file": str(source.csv)}
        out.origin.update(id_col=table.id_col, label_col=table.label_col)
        for reason, n in table.skipped.items():
            out.skipped[reason] = n
            out.examples[reason] = list(table.examples.get(reason, []))
        uses: dict[str, int] = {}
        for rel in rels:
            key = next((k for k in file_keys(rel) if k in table.labels), None)
            if key is None:
                out.skip("image files without a label", rel)
                continue
            uses[key] = uses.get(key, 0) + 1
            found.append((rel, table.labels[key]))
        if not found:
            raise DataError(
                f"{root}: no image file matches an id of {source.csv} by stem or name (ids such as "
                f"{', '.join(list(table.labels)[:3])}; files such as {', '.join(rels[:3])})"
            )
        for key in table.labels:
            if key not in uses:
                out.skip("ids without an image file", key)
        for key, n in uses.items():
            if n > 1:
                out.skip("ids naming several image files (each labeled)", key)
        where = str(source.csv)
    else:
        assert source.pattern is not None
        rx = label_pattern(source.pattern)
        out.origin = {"layout": "pattern", "pattern": source.pattern}
        for rel in rels:
            m = rx.search(rel.rsplit("/", 1)[-1])
            label = m.group(1) if m else None
            if label:
                found.append((rel, label))
            else:
                out.skip("file names not matching the pattern", rel)
        if not found:
            raise DataError(
                f"{root}: no file name matches --label-pattern '{source.pattern}' "
                f"(names such as {', '.join(rels[:3])})"
            )
        where = f"--label-pattern '{source.pattern}'"
    out.classes = _class_list({label for _, label in found}, class_names, where)
    index = {c: i for i, c in enumerate(out.classes)}
    out.paths = [root / rel for rel, _ in found]
    out.labels = [index[label] for _, label in found]
    return out


def true_labels(paths: Sequence[Path], labels: LabelSource, class_names: Sequence[str]) -> list[int]:
    """The class index of each file given, by `labels` (csv: the id is the file's name or stem;
    pattern: the file name; folders: the parent folder's name). DataError names files without one."""
    index = {name: i for i, name in enumerate(class_names)}
    table = read_labels_csv(labels.csv, labels.id_col, labels.label_col) if labels.csv is not None else None
    rx = label_pattern(labels.pattern) if labels.pattern is not None else None
    out, missing = [], []
    for p in paths:
        if table is not None:
            key = next((k for k in file_keys(p.name) if k in table), None)
            label = table[key] if key is not None else None
        elif rx is not None:
            m = rx.search(p.name)
            label = m.group(1) if m else None
        else:
            label = p.parent.name
        k = index.get(label) if label else None
        if k is None:
            missing.append(f"{p} ({label!r} is not a class)" if label else str(p))
        else:
            out.append(k)
    if missing:
        where = {"csv": f"in {labels.csv}", "pattern": f"by --label-pattern '{labels.pattern}'"}
        raise DataError(
            f"no known class {where.get(labels.layout, 'as the parent folder name')} for "
            f"{len(missing)} image(s), e.g. {', '.join(missing[:3])}"
        )
    return out


@dataclass(frozen=True, eq=False)
class LabelTable(Mapping[str, str]):
    """An id → label CSV as read: the first row of each id, the columns used, what was passed over
    (reason → count, the first few ids of each). Reads like the dict {id: label}."""

    path: Path
    labels: dict[str, str]
    id_col: str
    label_col: str
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.labels[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _column(header: list[str], name: str | None, default: int, path: Path, flag: str) -> int:
    if name is None:
        return default
    if name in header:
        return header.index(name)
    raise DataError(f"{path}: no column {name!r} ({flag}); the header is: {','.join(header)}")


def read_labels_csv(
    path: str | os.PathLike, id_col: str | None = None, label_col: str | None = None
) -> LabelTable:
    """Read an id,label CSV (header required; the columns named, else the first two) → {id: label}.

    A duplicate id is counted and the first row kept (a CSV with one row per box or per annotator
    repeats ids); those with another label than the first are counted apart. Rows with an empty id
    or label are counted too.
    """
    path = Path(path)
    rows = _csv_rows(path)
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header and rows of at least two columns (id,label)")
    header = [h.strip() for h in rows[0]]
    i = _column(header, id_col, 0, path, "--id-col")
    j = _column(header, label_col, 1 if i != 1 else 0, path, "--label-col")
    if i == j:
        raise DataError(f"{path}: the id and the label would both be column {header[i]!r}")
    table = LabelTable(path, {}, header[i], header[j])
    need = max(i, j) + 1

    def skip(reason: str, name: str) -> None:
        _count(table.skipped, table.examples, reason, name)

    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) < need:
            raise DataError(f"{path}:{lineno}: expected {header[i]},{header[j]}")
        key, label = row[i].strip(), row[j].strip()
        if not key:
            skip("rows without an id", f"line {lineno}")
        elif not label:
            skip("ids with an empty label", key)
        elif key not in table.labels:
            table.labels[key] = label
        elif table.labels[key] == label:
            skip("duplicate ids, same label", key)
        else:
            skip("duplicate ids with another label (first row kept)", key)
    if not table.labels:
        raise DataError(f"{path}: no row has both an id and a label")
    return table


def read_csv_ids(path: str | os.PathLike) -> tuple[list[str], int]:
    """The ids (first column) of a CSV with a header, in file order, first occurrences only; and
    how many duplicates were passed over. For `predict --files list.csv`."""
    path = Path(path)
    rows = _csv_rows(path)
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header and one row per file (id first)")
    ids: dict[str, None] = {}
    duplicates = 0
    for row in rows[1:]:
        key = row[0].strip() if row else ""
        if not key:
            continue
        if key in ids:
            duplicates += 1
        ids[key] = None
    return list(ids), duplicates


def stratified_split(
    labels: Iterable[int], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Seeded stratified split of sample indices → (train, val).

    Each class contributes round(n_c * val_fraction) samples to validation (at least one when the
    class has two or more samples), so small classes are not left out of validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val, _ = stratified_split3(labels, val_fraction, 0.0, seed)
    return train, val


def _share(n: int, fraction: float, room: int) -> int:
    """round(n × fraction), at least one when the fraction is not 0, at most `room`."""
    if fraction <= 0 or room < 1:
        return 0
    return min(max(round(n * fraction), 1), room)


def stratified_split3(
    labels: Iterable[int], val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[list[int], list[int], list[int]]:
    """Seeded stratified split of sample indices → (train, val, test), each sorted.

    Per class: round(n_c × fraction) to val and to test (at least one where the fraction is not 0
    and the class has samples to spare: one always stays in train), the rest to train. With
    `test_fraction` 0 it is exactly `stratified_split`'s (train, val), so recorded runs resume on
    the same split.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            "val and test fractions must be in [0, 1) with a sum below 1, "
            f"got {val_fraction}, {test_fraction}"
        )
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n_val = _share(len(idx), val_fraction, len(idx) - 1)
        n_test = _share(len(idx), test_fraction, len(idx) - 1 - n_val)
        val.extend(idx[:n_val])
        test.extend(idx[n_val : n_val + n_test])
        train.extend(idx[n_val + n_test :])
    return sorted(train), sorted(val), sorted(test)


def stratified_kfold(labels: Iterable[int], k: int, seed: int = 0) -> list[list[int]]:
    """Seeded stratified K folds: the held-out sample indices of each fold, each sorted.

    Every index is in exactly one fold. Each class is shuffled and dealt round-robin, the deal
    going on where the previous class stopped, so per class and in total the folds' sizes are
    within one of each other.
    """
    if k < 2:
        raise DataError(f"--folds must be at least 2, got {k}")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    n = sum(len(v) for v in by_class.values())
    if n < k:
        raise DataError(f"{n} images cannot be split into {k} folds")
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    turn = 0
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        for i in idx:
            folds[turn % k].append(i)
            turn += 1
    return [sorted(f) for f in folds]

