"""Kaggle submission formats: what each row holds, the competition's sample file, CSV/JSON writers.

A row is the id followed by value columns, decided by `OutputSpec`:

- `label="name"` / `"index"`: `id,label`, the top class's name or index;
- `label="prob"`: `id,label`, the probability of the positive class (binary tasks such as
  dogs-vs-cats-redux, scored by log loss), optionally clipped into [clip, 1 - clip];
- `probs=True`: `id,<class 1>,…,<class K>`, one probability per class (optionally clipped);
- `topk=K`: `id,label_1,…,label_K`, the K most probable classes, best first, one per column.

Rows are collected into small arrays (an int or a few floats per row, never images), so a
million-row run stays in memory comfortably; files are written atomically.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from cvtool.atomic import atomic_write
from cvtool.errors import CvtoolError

__all__ = [
    "FormatError",
    "LABELS",
    "OUTPUT_FORMATS",
    "Collector",
    "OutputSpec",
    "SampleSubmission",
    "format_for",
    "write_rows",
    "write_table",
]

LabelKind = Literal["name", "index", "prob"]
OutputFormat = Literal["csv", "json", "jsonl"]
LABELS: tuple[str, ...] = get_args(LabelKind)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


class FormatError(CvtoolError, ValueError):
    """The requested output cannot be made; the message says why."""


def format_for(path: str | os.PathLike, given: str | None = None) -> str:
    """The output format: as given, else from the file's suffix (.json, .jsonl), else csv."""
    if given is not None:
        if given not in OUTPUT_FORMATS:
            raise FormatError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {given!r}")
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in ("json", "jsonl") else "csv"


@dataclass(frozen=True)
class OutputSpec:
    """What the value columns of a submission hold (see the module docstring)."""

    label: str = "name"
    probs: bool = False
    topk: int | None = None
    clip: float | None = None
    positive: str | None = None  # label="prob": the class whose probability is written

    def check(self, class_names: Sequence[str]) -> None:
        """Raise FormatError when the options contradict each other or the model's classes."""
        k = len(class_names)
        if self.label not in LABELS:
            raise FormatError(f"--label must be one of {', '.join(LABELS)}, got {self.label!r}")
        if self.probs and self.topk:
            raise FormatError("--probs and --topk are different formats; choose one")
        if self.label == "prob" and (self.probs or self.topk):
            raise FormatError(
                "--label prob writes one probability per row; it does not combine with --probs/--topk"
            )
        if self.topk is not None and not 1 <= self.topk <= k:
            raise FormatError(f"--topk must be between 1 and the number of classes ({k}), got {self.topk}")
        if self.clip is not None:
            if not 0.0 <= self.clip < 0.5:
                raise FormatError(f"--clip must be in [0, 0.5), got {self.clip}")
            if not (self.probs or self.label == "prob"):
                raise FormatError("--clip applies to probabilities: use it with --label prob or --probs")
        if self.positive is not None:
            if self.label != "prob":
                raise FormatError("--positive goes with --label prob")
            if self.positive not in class_names:
                raise FormatError(
                    f"--positive {self.positive!r} is not a class of the model {list(class_names)[:10]}"
                )
        elif self.label == "prob" and k != 2:
            raise FormatError(
                f"--label prob is for binary tasks, but the model has {k} classes; "
                "name the class with --positive, or use --probs"
            )

    def columns(self, class_names: Sequence[str]) -> list[str]:
        """The default header: id then the value columns."""
        if self.probs:
            return ["id", *class_names]
        if self.topk:
            return ["id", *(f"label_{i}" for i in range(1, self.topk + 1))]
        return ["id", "label"]

    def positive_index(self, class_names: Sequence[str]) -> int:
        # Binary tasks: the second class is the positive one (cat=0, dog=1 in dogs-vs-cats).
        return list(class_names).index(self.positive) if self.positive is not None else 1


def _fmt(x: float) -> float:
    """A probability as written: 6 significant digits (CSV and JSON agree)."""
    return float(f"{x:.6g}")


class Collector:
    """Per-row results for n rows in output order: only what the format writes is kept."""

    def __init__(self, n: int, class_names: Sequence[str], spec: OutputSpec):
        spec.check(class_names)
        self.n, self.names, self.spec = n, list(class_names), spec
        k = len(class_names)
        self.ok = np.zeros(n, bool)
        self.top = np.zeros((n, spec.topk or 1), np.int32)  # label / top-k class indices
        width = k if spec.probs else (1 if spec.label == "prob" else 0)
        self.values = np.zeros((n, width), np.float32)  # probabilities written
        self._pos = spec.positive_index(class_names) if spec.label == "prob" else 0
        # For filling rows of unreadable images: how often each class came first, summed probs.
        self.counts = np.zeros(k, np.int64)
        self.prob_sum = np.zeros(k, np.float64)

    def add(self, rows: Sequence[int] | np.ndarray, probs: np.ndarray) -> None:
        """probs (n, K) for the rows at positions `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        self.ok[rows] = True
        k = self.spec.topk or 1
        # Stable sort on -p: ties go to the lower class index, as argmax does.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        self.top[rows] = order
        if self.spec.probs:
            self.values[rows] = probs
        elif self.spec.label == "prob":
            self.values[rows, 0] = probs[:, self._pos]
        self.counts += np.bincount(order[:, 0], minlength=len(self.names))
        self.prob_sum += probs.sum(axis=0, dtype=np.float64)

    def fill(self, rows: Sequence[int]) -> None:
        """Give unread rows the prediction of the run as a whole: the most often predicted classes
        (probabilities: their mean over the images that were read; uniform if none was)."""
        idx = np.asarray(rows, dtype=np.int64)
        if not len(idx):
            return
        n_ok = int(self.counts.sum())
        mean = self.prob_sum / n_ok if n_ok else np.full(len(self.names), 1.0 / len(self.names))
        # Most predicted first; ties broken by mean probability, then class index.
        ranked = np.lexsort((np.arange(len(self.names)), -mean, -self.counts))
        self.top[idx] = ranked[: self.top.shape[1]]
        if self.spec.probs:
            self.values[idx] = mean
        elif self.spec.label == "prob":
            self.values[idx, 0] = mean[self._pos]
        self.ok[idx] = True

    def row_values(self, i: int) -> list[Any]:
        """The value columns of row i (str labels, int indices or float probabilities)."""
        spec = self.spec
        if spec.probs or spec.label == "prob":
            v = self.values[i]
            if spec.clip:
                v = np.clip(v, spec.clip, 1.0 - spec.clip)
            return [_fmt(x) for x in v.tolist()]
        top = self.top[i].tolist()
        return top if spec.label == "index" else [self.names[j] for j in top]


@dataclass
class SampleSubmission:
    """A competition's sample_submission file: header, id column, row order."""

    path: Path
    header: list[str]
    ids: list[str]

    @classmethod
    def read(cls, path: str | os.PathLike) -> SampleSubmission:
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                ids = [row[0].strip() for row in reader if row]
        except OSError as e:
            raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
        if not header or len(header) < 2:
            raise FormatError(f"{path}: expected a header with an id column and value column(s)")
        if not ids:
            raise FormatError(f"{path}: no rows")
        seen: set[str] = set()
        dups = []
        for i in ids:
            if i in seen:
                dups.append(i)
            seen.add(i)
        if dups:
            raise FormatError(f"{path}: {len(dups)} duplicate id(s) such as {dups[:3]}")
        return cls(path, [h.strip() for h in header], ids)

    def columns_for(
        self, spec: OutputSpec, class_names: Sequence[str]
    ) -> tuple[list[str], np.ndarray | None]:
        """(header to write, order of our value columns under it) from the sample's header.

        With --probs the sample's columns are class names, possibly in another order; otherwise
        its header renames ours and must have as many columns.
        """
        ours = spec.columns(class_names)
        values = self.header[1:]
        if spec.probs:
            missing = [c for c in class_names if c not in values]
            extra = [c for c in values if c not in class_names]
            if missing or extra:
                raise FormatError(
                    f"{self.path}: its columns {values[:10]} are not the model's classes "
                    f"(not in the model: {extra[:5]}; missing from the file: {missing[:5]})"
                )
            index = {c: i for i, c in enumerate(class_names)}
            return self.header, np.array([index[c] for c in values])
        if len(self.header) != len(ours):
            raise FormatError(
                f"{self.path} has {len(self.header)} columns {self.header[:6]}, but this format writes "
                f"{len(ours)} ({', '.join(ours[:6])})"
            )
        return self.header, None

    def align(self, ids: Sequence[str], id_from: str = "stem") -> list[int]:
        """Positions in `ids` in the sample's row order; FormatError when either side lacks ids."""
        where = {i: k for k, i in enumerate(ids)}
        missing = [i for i in self.ids if i not in where]
        sample = set(self.ids)
        extra = [i for i in ids if i not in sample]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} id(s) of {self.path.name} have no image, e.g. {missing[:3]}")
            if extra:
                parts.append(f"{len(extra)} image(s) have no row in {self.path.name}, e.g. {extra[:3]}")
            msg = "; ".join(parts)
            head = self.ids[:100]
            looks_named = 2 * sum("." in i for i in head) > len(head)
            if missing and extra and looks_named and id_from == "stem":
                msg += " (the sample's ids look like file names: try --id-from name)"
            elif missing and extra and not looks_named and id_from == "name":
                msg += " (the sample's ids have no extension: try --id-from stem)"
            raise FormatError(msg)
        return [where[i] for i in self.ids]


def _rows(ids: Sequence[str], coll: Collector, order: Iterator[int], columns: np.ndarray | None):
    for i in order:
        values = coll.row_values(i)
        if columns is not None:
            values = [values[c] for c in columns]
        yield ids[i], values


def write_table(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str = "csv"
) -> int:
    """Write rows (the id, then the values) as csv, json (a list of objects) or jsonl; atomically.

    Zero rows still make a valid file: a header line, `[]`, or an empty file. Returns the rows written.
    """
    if fmt not in OUTPUT_FORMATS:
        raise FormatError(f"unknown output format {fmt!r}")
    n = 0
    header = list(header)
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                n += 1
        else:
            sep = "\n" if fmt == "jsonl" else ",\n"
            if fmt == "json":
                f.write("[\n")
            for row in rows:
                obj = dict(zip(header, row, strict=True))
                f.write((sep if n else "") + json.dumps(obj, ensure_ascii=False))
                n += 1
            f.write("\n]\n" if fmt == "json" else ("\n" if n else ""))
    return n


def write_rows(
    path: str | os.PathLike,
    header: Sequence[str],
    ids: Sequence[str],
    coll: Collector,
    *,
    rows: Iterator[int] | Sequence[int],
    columns: np.ndarray | None = None,
    fmt: str = "csv",
) -> int:
    """Write `rows` (positions, in order) as csv, json (a list of objects) or jsonl; atomically.

    `columns` reorders the value columns (to match a sample file). Returns the number of rows.
    """
    table = ([id_, *values] for id_, values in _rows(ids, coll, iter(rows), columns))
    return write_table(path, header, table, fmt)
