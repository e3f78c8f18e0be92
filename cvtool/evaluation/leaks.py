"""Leaked test images: the evaluated images that an audit found twinned with another folder's.

`evaluate --exclude-leaks AUDIT_DIR` reads AUDIT_DIR/summary.json (to check that DATA was among
the audited folders) and AUDIT_DIR/duplicates.csv (every group of twins), then repeats the
headline metrics without the evaluated images whose group holds a file of another folder, and
lists those images in leaked_images.csv.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.data import natural_key
from cvtool.evaluation.audit import KINDS, AuditError
from cvtool.evaluation.outputs import write_csv

__all__ = ["WithoutLeaks", "leaked_files", "read_leaks", "without_leaks"]


@dataclass(frozen=True)
class WithoutLeaks:
    """The headline metrics again, without the evaluated images that have a twin in another
    audited folder (evaluate's `exclude_leaks`, read from the audit's duplicates.csv)."""

    audit: str  # the audit folder
    excluded: int  # evaluated images left out
    by_kind: dict[str, int]  # excluded images by the strongest kind of their twin elsewhere
    n: int  # images left in
    accuracy: float | None  # None: every image was excluded
    macro_f1: float | None
    top5_accuracy: float | None
    log_loss: float | None


def read_leaks(audit_dir: str | os.PathLike, data: str | os.PathLike) -> dict[str, tuple[str, list[str]]]:
    """The leaked files of an audit (see `leaked_files`), once checked that it audited `data`."""
    summary = Path(audit_dir) / "summary.json"
    try:
        folders = json.loads(summary.read_text(encoding="utf-8"))["folders"]
        audited = {os.path.realpath(f["path"]): f["name"] for f in folders}
    except OSError as e:
        raise AuditError(
            f"{summary}: cannot read: {e.strerror or e} (run cvtool audit -o {audit_dir} first)"
        ) from e
    except (ValueError, KeyError, TypeError):
        raise AuditError(f"{summary}: not a summary.json written by cvtool audit") from None
    if os.path.realpath(data) not in audited:
        raise AuditError(
            f"{audit_dir} audited {', '.join(audited.values())}, not {data}: "
            f"run cvtool audit with {data} among its folders"
        )
    return leaked_files(audit_dir)


def without_leaks(
    audit_dir: str | os.PathLike,
    leaks: dict[str, tuple[str, list[str]]],
    paths: Sequence[Path],
    y_true: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    out_dir: str | os.PathLike,
) -> WithoutLeaks:
    """Metrics of the images in `paths` without those in `leaks`; writes leaked_images.csv."""
    from cvtool.evaluation.metrics import classification_metrics, probability_metrics

    hit = [leaks.get(os.path.realpath(p)) for p in paths]
    left = np.array([h is None for h in hit], bool)
    by_kind: dict[str, int] = {k: sum(h is not None and h[0] == k for h in hit) for k in KINDS}
    write_csv(
        Path(out_dir) / "leaked_images.csv",
        ["path", "kind", "twin_in"],
        [[str(p), h[0], " ".join(h[1])] for p, h in zip(paths, hit, strict=True) if h is not None],
    )
    y, pr = y_true[left], probs[left]
    c = classification_metrics(y, pr.argmax(axis=1), names) if len(y) else None
    pm = probability_metrics(y, pr) if len(y) else {}
    return WithoutLeaks(
        audit=str(audit_dir),
        excluded=int((~left).sum()),
        by_kind=by_kind,
        n=int(left.sum()),
        accuracy=None if c is None else float(c["accuracy"]),
        macro_f1=None if c is None else float(c["macro"]["f1"]),
        top5_accuracy=pm.get("top5_accuracy"),
        log_loss=pm.get("log_loss"),
    )


def leaked_files(audit_dir: str | os.PathLike) -> dict[str, tuple[str, list[str]]]:
    """{real path: (strongest kind, other folders)} of every file in AUDIT_DIR/duplicates.csv that has
    a twin in another folder."""
    path = Path(audit_dir) / "duplicates.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise AuditError(
            f"{path}: cannot read: {e.strerror or e} (run cvtool audit -o {audit_dir} first)"
        ) from e
    need = {"group", "kind", "file", "folder"}
    if rows and not need <= set(rows[0]):
        raise AuditError(f"{path}: not a duplicates.csv written by cvtool audit (needs {sorted(need)})")
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out: dict[str, tuple[str, list[str]]] = {}
    for members in groups.values():
        present = {m["folder"] for m in members}
        if len(present) < 2:
            continue
        for m in members:
            key = os.path.realpath(m["file"])
            kind = m["kind"]
            others = sorted(present - {m["folder"]}, key=natural_key)
            if key in out:
                old_kind, old_others = out[key]
                kind = min(kind, old_kind, key=lambda k: KINDS.index(k) if k in KINDS else 9)
                others = sorted(set(others) | set(old_others), key=natural_key)
            out[key] = (kind, others)
    return out
