"""`evaluate()`: run a model over a labeled folder and write metrics, figures and the report.

DATA is an ImageFolder tree (class folders matched to the card's class names) or a flat folder with
an `id,label` CSV (id = file stem). Files that fail to decode are counted, listed and excluded from
the metrics; nothing is dropped silently.

Outputs in `out_dir`: metrics.json, per_image.csv, confusion_matrix.csv/.png,
confusion_matrix_normalized.png, most_confused.csv, reliability.png, failed_images.csv (when some
images failed); with `failures` > 0 failures/, failures.csv and top_losses.png; with `occlusion` > 0
occlusion/ (maps of the worst failures and of random correct images); report.html.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.atomic import atomic_write_text
from cvtool.data import DataError, list_images, read_labels_csv, scan_image_folder
from cvtool.evaluate.failures import rank_failures, write_failures
from cvtool.evaluate.metrics import (
    classification_metrics,
    most_confused,
    per_image_loss,
    probability_metrics,
    reliability_bins,
)
from cvtool.evaluate.occlusion import (
    OCCLUSION_CSV_HEADER,
    default_stride,
    default_window,
    num_positions,
    occlude_file,
    save_occlusion,
    summary_row,
)
from cvtool.evaluate.outputs import fresh_dir, safe_filename, write_csv
from cvtool.evaluate.plots import plot_confusion_matrix, plot_reliability
from cvtool.images import ImageError
from cvtool.infer.pipeline import predict_files
from cvtool.infer.session import OnnxModel

__all__ = ["labeled_files", "evaluate", "TaskStarter"]

# on_task(description, total) starts a progress bar and returns its advance(n) function.
TaskStarter = Callable[[str, int], Callable[[int], None]]


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


def _per_image_rows(
    paths: list[Path], y_true: np.ndarray, probs: np.ndarray, loss: np.ndarray, names: list[str]
) -> tuple[list[str], list[list[Any]]]:
    k = min(5, len(names))
    header = ["path", "true", "pred", "p_true", "p_pred", "loss"]
    for j in range(1, k + 1):
        header += [f"top{j}", f"p_top{j}"]
    # Highest probability first; ties by class index, so the order is deterministic.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = []
    for i, p in enumerate(paths):
        t, q = int(y_true[i]), int(top[i, 0])
        row = [str(p), names[t], names[q], f"{probs[i, t]:.6f}", f"{probs[i, q]:.6f}", f"{loss[i]:.6f}"]
        for c in top[i]:
            row += [names[c], f"{probs[i, c]:.6f}"]
        rows.append(row)
    return header, rows


def _occlusion_maps(
    model: OnnxModel,
    out: Path,
    picks: list[tuple[str, Path, int, int]],
    window: int,
    stride: int,
    baseline: str,
    batch_size: int,
    on_task: TaskStarter | None,
) -> tuple[list[dict[str, Any]], dict[Path, str]]:
    """Occlusion maps for (name, path, true, pred) picks; targets: true, and pred when different."""
    names = list(model.card.class_names)
    total = len(picks) * num_positions(model.card.input_size, window, stride)
    advance = on_task("occlusion", total) if on_task else None
    entries, rows, failed = [], [], {}
    with fresh_dir(out, "occlusion") as folder:
        for name, path, t, q in picks:
            try:
                shown, res = occlude_file(
                    model.run, path, model.card, window, stride, baseline, batch_size, advance
                )
            except ImageError as e:
                failed[path] = e.reason
                continue
            targets = [t] if t == q else [t, q]
            caption = f"{path.name}: true {names[t]}, predicted {names[q]} (p = {res.p0[q]:.3f})"
            files = save_occlusion(folder, name, shown, res, targets, names, caption)
            for k in targets:
                rows.append(summary_row(name, path, res, k, names[k], files))
            entries.append({"name": name, "caption": caption, "png": out / "occlusion" / files["png"].name})
        write_csv(folder / "occlusion.csv", OCCLUSION_CSV_HEADER, rows)
    return entries, failed


def evaluate(
    model: OnnxModel,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    *,
    failures: int = 0,
    occlusion: int = 0,
    window: int | None = None,
    stride: int | None = None,
    baseline: str = "mean",
    report: bool = True,
    seed: int = 0,
    on_task: TaskStarter | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `data` and write the outputs listed in the module docstring.

    `failures`: how many of the worst misclassified images to copy and show; `occlusion`: how many
    worst failures and as many random correct images (seeded) get occlusion maps.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.card.class_names)
    paths, ys, skipped = labeled_files(data, names, labels_csv)
    if on_start:
        on_start(len(paths))
    preds = predict_files(model, paths, batch_size, workers, on_progress)
    label_of = dict(zip(paths, ys, strict=True))
    y_true = np.array([label_of[p] for p in preds.paths], dtype=np.int64)
    probs = preds.probs
    y_pred = probs.argmax(axis=1) if len(preds.paths) else np.zeros(0, np.int64)
    loss = per_image_loss(y_true, probs)

    m = classification_metrics(y_true, y_pred, names)
    cm = m.pop("confusion_matrix")
    m.update(probability_metrics(y_true, probs) if len(y_true) else {})
    bins = reliability_bins(y_true, probs)
    m.update(
        {
            "model": str(model.path),
            "data": str(data),
            "failed_images": len(preds.failed),
            "skipped_files": skipped,
            "provider": preds.provider,
            "images_per_s": round(preds.images_per_second, 1),
            "reliability": bins,
        }
    )
    write_csv(
        out / "confusion_matrix.csv",
        ["true\\pred", *names],
        [[n, *r] for n, r in zip(names, cm.tolist(), strict=True)],
    )
    confused = most_confused(cm, names)
    write_csv(out / "most_confused.csv", ["true", "pred", "count"], confused)
    write_csv(out / "per_image.csv", *_per_image_rows(preds.paths, y_true, probs, loss, names))
    plot_confusion_matrix(cm, names, out / "confusion_matrix.png")
    plot_confusion_matrix(cm, names, out / "confusion_matrix_normalized.png", normalize=True)
    plot_reliability(bins, m.get("expected_calibration_error", 0.0), out / "reliability.png")

    ranked = rank_failures(preds.paths, y_true, probs, loss)
    files = [
        "metrics.json",
        "per_image.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "most_confused.csv",
        "reliability.png",
    ]
    fail_info = write_failures(out, ranked, names, model.card, failures) if failures > 0 else None
    if fail_info:
        files += ["failures/", "failures.csv"] + (["top_losses.png"] if fail_info["gallery"] else [])

    occ_entries: list[dict[str, Any]] = []
    failed = dict(preds.failed)
    if occlusion > 0 and len(preds.paths):
        window = window or default_window(model.card.input_size)
        stride = stride or default_stride(window)
        picks = [
            (f"failure_{f.rank:02d}_{safe_filename(f.path.stem)}", f.path, f.true, f.pred)
            for f in ranked[:occlusion]
        ]
        correct = np.flatnonzero(y_pred == y_true)
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(correct, size=min(occlusion, len(correct)), replace=False).tolist())
        picks += [
            (
                f"correct_{i:02d}_{safe_filename(preds.paths[j].stem)}",
                preds.paths[j],
                int(y_true[j]),
                int(y_pred[j]),
            )
            for i, j in enumerate(chosen, start=1)
        ]
        occ_entries, occ_failed = _occlusion_maps(
            model, out, picks, window, stride, baseline, batch_size, on_task
        )
        failed.update(occ_failed)
        files.append("occlusion/")
        m["occlusion"] = {
            "window": window,
            "stride": stride,
            "baseline": baseline,
            "images": len(occ_entries),
        }

    atomic_write_text(out / "metrics.json", json.dumps(m, indent=2, ensure_ascii=False))
    if failed:
        write_csv(out / "failed_images.csv", ["path", "reason"], [[str(p), r] for p, r in failed.items()])
        files.append("failed_images.csv")
    else:
        (out / "failed_images.csv").unlink(missing_ok=True)  # from an earlier run: not this one's
    if report:
        from cvtool.evaluate.report import write_report

        write_report(
            out / "report.html",
            metrics=m,
            class_names=names,
            confused=confused,
            failures=ranked,
            gallery=fail_info["gallery"] if fail_info else None,
            occlusion=occ_entries,
        )
        files.append("report.html")
    m["confusion_matrix"] = cm
    m["failed"] = failed
    m["most_confused"] = confused
    m["failures"] = ranked
    m["files"] = files  # names written in out_dir by this run
    return m
