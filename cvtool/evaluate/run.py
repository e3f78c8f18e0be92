"""`evaluate()`: run a model over a labeled folder and write metrics and figures.

DATA is an ImageFolder tree (class folders matched to the card's class names) or a flat folder with
an `id,label` CSV (id = file stem). Files that fail to decode are counted, listed and excluded from
the metrics; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.atomic import atomic_write_text
from cvtool.data import DataError, list_images, read_labels_csv, scan_image_folder
from cvtool.evaluate.metrics import classification_metrics
from cvtool.evaluate.plots import plot_confusion_matrix
from cvtool.infer.pipeline import predict_files
from cvtool.infer.session import OnnxModel

__all__ = ["labeled_files", "evaluate"]


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


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def evaluate(
    model: OnnxModel,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `data`; writes metrics.json, per_image.csv, confusion matrices."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.card.class_names)
    paths, ys, skipped = labeled_files(data, names, labels_csv)
    if on_start:
        on_start(len(paths))
    preds = predict_files(model, paths, batch_size, workers, on_progress)
    label_of = dict(zip(paths, ys, strict=True))
    y_true = np.array([label_of[p] for p in preds.paths], dtype=np.int64)
    y_pred = preds.probs.argmax(axis=1) if len(preds.paths) else np.zeros(0, np.int64)

    m = classification_metrics(y_true, y_pred, names)
    cm = m.pop("confusion_matrix")
    m.update(
        {
            "model": str(model.path),
            "data": str(data),
            "failed_images": len(preds.failed),
            "skipped_files": skipped,
            "provider": preds.provider,
            "images_per_s": round(preds.images_per_second, 1),
        }
    )
    atomic_write_text(out / "metrics.json", json.dumps(m, indent=2, ensure_ascii=False))
    _write_csv(
        out / "confusion_matrix.csv",
        ["true\\pred", *names],
        [[n, *r] for n, r in zip(names, cm.tolist(), strict=True)],
    )
    idx = np.arange(len(y_true))
    _write_csv(
        out / "per_image.csv",
        ["path", "true", "pred", "p_true", "p_pred"],
        [
            [str(p), names[t], names[q], f"{pt:.6f}", f"{pq:.6f}"]
            for p, t, q, pt, pq in zip(
                preds.paths, y_true, y_pred, preds.probs[idx, y_true], preds.probs[idx, y_pred], strict=True
            )
        ],
    )
    if preds.failed:
        _write_csv(
            out / "failed_images.csv", ["path", "reason"], [[str(p), r] for p, r in preds.failed.items()]
        )
    plot_confusion_matrix(cm, names, out / "confusion_matrix.png")
    plot_confusion_matrix(cm, names, out / "confusion_matrix_normalized.png", normalize=True)
    m["confusion_matrix"] = cm
    m["failed"] = preds.failed
    return m
