"""Kaggle submission files from predictions.

Rows are `id,label` where id is the file stem and label the class name. Ids that are all numeric
sort numerically (2 before 10), otherwise naturally. Files that failed to decode are handled by
`on_error`:

- `fill` (default): the id still gets a row, labeled with the class predicted most often over the
  images that did decode (the empirical prior's top class), and it is listed in the failures file.
  Kaggle rejects a submission with missing ids, so this keeps it valid while saying what was filled.
- `skip`: the id has no row (and is listed in the failures file).
- `fail`: nothing is written.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.atomic import atomic_write
from cvtool.data import natural_key
from cvtool.infer.pipeline import Predictions
from cvtool.infer.sources import id_sort_key

__all__ = ["ON_ERROR", "SubmissionError", "submission_rows", "write_submission", "write_failures"]

ON_ERROR = ("fill", "skip", "fail")


class SubmissionError(RuntimeError):
    """A submission could not be written as asked; the message says why."""


def submission_rows(
    preds: Predictions, class_names: Sequence[str], on_error: str = "fill"
) -> list[tuple[str, str]]:
    """(id, label) rows sorted by id."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if preds.failed and on_error == "fail":
        raise SubmissionError(f"{len(preds.failed)} image(s) failed; nothing written (--on-error fail)")
    top = preds.probs.argmax(axis=1) if len(preds.paths) else np.zeros(0, int)
    rows = [(p.stem, class_names[int(k)]) for p, k in zip(preds.paths, top, strict=True)]
    if preds.failed and on_error == "fill":
        counts = np.bincount(top, minlength=len(class_names))
        fallback = class_names[int(counts.argmax())]
        rows += [(p.stem, fallback) for p in preds.failed]
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise SubmissionError(
            f"{len(dup)} duplicate id(s) such as {dup[:3]}: two files share a stem (e.g. 1.png and 1.jpg)"
        )
    key = id_sort_key(ids)
    rows.sort(key=lambda r: key(r[0]))
    return rows


def write_submission(
    path: str | os.PathLike, rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("id", "label")
) -> Path:
    """Write the CSV atomically: an interrupted run leaves no partial file."""
    path = Path(path)
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_failures(path: str | os.PathLike, failed: dict[Path, str]) -> Path:
    """path,reason CSV of the files that could not be read."""
    path = Path(path)
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows((str(p), r) for p, r in sorted(failed.items(), key=lambda x: natural_key(str(x[0]))))
    return path
