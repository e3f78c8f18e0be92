"""Out-of-fold predictions: the CSV that k-fold training writes and calibrate / suspects read.

One row per training image, each exactly once: `path` (as listed for training), `label` (its
class name), `fold` (the fold that held it out, 1-based), then `p_<class>` (the held-out
probability of each class) and `logit_<class>` (the raw logits), in the model's class order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.atomic import atomic_write_csv
from cvtool.errors import CvtoolError
from cvtool.softmax import softmax

__all__ = ["OofError", "OofTable", "read_oof", "write_oof"]


class OofError(CvtoolError, ValueError):
    """An out-of-fold file is missing columns or values; the message names the file and the row."""


@dataclass
class OofTable:
    paths: list[str]
    labels: np.ndarray  # (N,) int64, indices into class_names
    folds: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, K) float32
    class_names: tuple[str, ...]

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)


def write_oof(
    path: str | os.PathLike,
    paths: Sequence[str],
    labels: Sequence[int],
    folds: Sequence[int],
    logits: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """Write the table atomically (probabilities from the logits, so the two always agree)."""
    probs = softmax(logits)
    header = ["path", "label", "fold"] + [f"p_{c}" for c in class_names] + [f"logit_{c}" for c in class_names]
    rows = (
        [p, class_names[y], f, *(f"{v:.6g}" for v in pr), *(f"{v:.6g}" for v in lo)]
        for p, y, f, pr, lo in zip(paths, labels, folds, probs, logits, strict=True)
    )
    atomic_write_csv(path, header, rows)


def read_oof(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> OofTable:
    """Read an out-of-fold CSV; with `class_names` (a model's), its classes must be those."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise OofError(f"{path}: cannot read: {e.strerror or e}") from e
    if not rows:
        raise OofError(f"{path}: empty file")
    header, body = rows[0], rows[1:]
    names = tuple(h[len("logit_") :] for h in header if h.startswith("logit_"))
    need = ["path", "label", "fold"] + [f"logit_{c}" for c in names]
    missing = [c for c in ("path", "label", "fold") if c not in header]
    if missing or not names:
        raise OofError(f"{path}: not an out-of-fold file (needs path, label, fold and logit_<class> columns)")
    if class_names is not None and tuple(class_names) != names:
        raise OofError(f"{path}: classes {list(names)[:10]} are not the model's {list(class_names)[:10]}")
    col = {h: i for i, h in enumerate(header)}
    index = {c: i for i, c in enumerate(names)}
    labels, folds, logits, paths = [], [], [], []
    for lineno, row in enumerate(body, start=2):
        if not row:
            continue
        try:
            label = row[col["label"]]
            if label not in index:
                raise OofError(f"{path}:{lineno}: label {label!r} is not one of the classes")
            labels.append(index[label])
            folds.append(int(row[col["fold"]]))
            logits.append([float(row[col[c]]) for c in need[3:]])
            paths.append(row[col["path"]])
        except (ValueError, IndexError) as e:
            if isinstance(e, OofError):
                raise
            raise OofError(f"{path}:{lineno}: malformed row ({e})") from None
    if not paths:
        raise OofError(f"{path}: no rows")
    return OofTable(
        paths=paths,
        labels=np.asarray(labels, np.int64),
        folds=np.asarray(folds, np.int64),
        logits=np.asarray(logits, np.float32),
        class_names=names,
    )
