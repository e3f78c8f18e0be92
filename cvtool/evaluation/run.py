"""`evaluate()`: run a model over a labeled folder and write metrics, figures and the report.

DATA is an ImageFolder tree (class folders matched to the card's class names), a folder with an
id,label CSV (id = file stem or name) or one whose file names give the label
(`cvtool.data.LabelSource`). Files that fail to decode are counted, listed and excluded from the
metrics; nothing is dropped silently.

Outputs in `out_dir`: metrics.json, per_image.csv, confusion_matrix.csv/.png,
confusion_matrix_normalized.png, most_confused.csv, reliability.png, failed_images.csv (when some
images failed); with `failures` > 0 failures/, failures.csv and top_losses.png; with `occlusion` > 0
occlusion/ (maps of the worst failures and of random correct images); with `cam` > 0 cam/ (class
activation maps of the same kind of picks); report.html. Those of them that a run does not write
are removed, so the folder never mixes two runs; other files stay.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.atomic import atomic_write_text
from cvtool.contract import ModelCard
from cvtool.data import LabeledSamples, LabelSource, labeled_files
from cvtool.errors import CvtoolError
from cvtool.evaluation.cam import CamModel, cam_maps, open_cam
from cvtool.evaluation.failures import Failure, rank_failures, write_failures
from cvtool.evaluation.faithfulness import DEFAULT_STEPS, FaithfulnessSettings, mean_scores
from cvtool.evaluation.leaks import read_leaks, without_leaks
from cvtool.evaluation.metrics import (
    classification_metrics,
    most_confused,
    per_image_loss,
    probability_metrics,
    reliability_bins,
)
from cvtool.evaluation.occlusion import (
    MapRequest,
    check_baseline,
    num_positions,
    occlusion_maps,
    resolve_window,
)
from cvtool.evaluation.oof import read_oof
from cvtool.evaluation.outputs import fresh_dir, remove_stale, safe_filename, write_csv
from cvtool.evaluation.plots import plot_confusion_matrix, plot_reliability
from cvtool.evaluation.result import CamSettings, ClassScores, EvalResult, OcclusionSettings, Scores
from cvtool.evaluation.suspects import SuspectReport, oof_suspects, suspect_report, write_suspects
from cvtool.infer.pipeline import Predictions, predict_files
from cvtool.infer.session import OnnxModel, open_model
from cvtool.softmax import softmax

__all__ = ["DEFAULT_CAM", "OUTPUTS", "EvalResult", "TaskStarter", "evaluate"]

# A CAM costs about one forward pass; what --cam 5 adds to evaluate is mostly drawing its ten
# figures (bench/RESULTS.md: +2.6 s on the demo model), so evaluate makes them by default.
DEFAULT_CAM = 5

# on_task(description, total) starts a progress bar and returns its advance(n) function.
TaskStarter = Callable[[str, int], Callable[[int], None]]

# What every run writes, then the rest of what evaluate may write ("x/": a folder). A run
# removes those it does not write, so an earlier run's cannot pass for its own.
ALWAYS = (
    "metrics.json",
    "per_image.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "most_confused.csv",
    "reliability.png",
)
OUTPUTS = (
    *ALWAYS,
    "reliability_uncalibrated.png",
    "failures/",
    "failures.csv",
    "top_losses.png",
    "suspects.csv",
    "suspects.png",
    "leaked_images.csv",
    "occlusion/",
    "cam/",
    "failed_images.csv",
    "report.html",
)


class EvaluationError(CvtoolError, ValueError):
    """What to evaluate is missing or contradicts itself (no model and no out-of-fold CSV, …)."""


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


def _occlusion_picks(
    ranked: list[Failure], paths: list[Path], y_true: np.ndarray, y_pred: np.ndarray, k: int, seed: int
) -> list[MapRequest]:
    """The k worst failures and k random correct images (seeded); targets: true, and pred if different."""
    picks = [
        (f"failure_{f.rank:02d}_{safe_filename(f.path.stem)}", f.path, f.true, f.pred) for f in ranked[:k]
    ]
    correct = np.flatnonzero(y_pred == y_true)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(correct, size=min(k, len(correct)), replace=False).tolist())
    picks += [
        (f"correct_{i:02d}_{safe_filename(paths[j].stem)}", paths[j], int(y_true[j]), int(y_pred[j]))
        for i, j in enumerate(chosen, start=1)
    ]
    return [MapRequest(name, p, (t,) if t == q else (t, q), true=t, pred=q) for name, p, t, q in picks]


def _open_cam(model: OnnxModel, cam: int | None, layer: str | None) -> CamModel | None:
    """The split model for `cam` CAMs; with cam=None, only when the model can be split."""
    if cam is None and layer is None:
        try:
            return open_cam(model)
        except CvtoolError:  # no feature map, or a head that does not run: no CAMs by default
            return None
    return open_cam(model, layer) if cam is None or cam > 0 else None


def evaluate(
    model: OnnxModel | str | os.PathLike | None,
    data: str | os.PathLike | LabeledSamples | None,
    out_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | LabelSource | None = None,
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
    cam: int | None = None,
    cam_layer: str | None = None,
    faithfulness: bool = False,
    faithfulness_steps: int = DEFAULT_STEPS,
    suspects: int = 0,
    oof: str | os.PathLike | None = None,
    exclude_leaks: str | os.PathLike | None = None,
) -> EvalResult:
    """Evaluate `model` (an opened model, or an .onnx path opened with its own card on the best
    device) on `data` and write the outputs listed in the module docstring.

    `data` is a folder whose labels `labels_csv` describes (an id,label CSV, a LabelSource, or
    None: class folders), or the LabeledSamples `labeled_files` made of it for the card's classes.

    `failures`: how many of the worst misclassified images to copy and show; `occlusion`: how many
    worst failures and as many random correct images (seeded) get occlusion maps; `cam`: the same
    for class activation maps, split at `cam_layer` (default: the last feature map; SplitError,
    before anything runs, when the model has none). `cam=None`: DEFAULT_CAM when the model has a
    usable feature map (and `cam_layer` is not given), else none. `faithfulness` scores every map
    by deletion and insertion AUC against a random map (`seed`), in `faithfulness_steps` steps.

    `suspects`: find suspected label errors (cvtool/evaluation/suspects.py) in the evaluated
    images, or in the out-of-fold CSV `oof`, and show the first `suspects`. `exclude_leaks`: an
    audit folder (cvtool audit) of DATA and others; metrics.json's without_leaks repeats the
    headline metrics without the evaluated images that have a twin in another folder.

    `model=None` with `oof`: the evaluation of the out-of-fold predictions themselves (k-fold
    training's CV predictions; no model is run, so no maps, and `data` is not read).
    """
    if model is None:
        if oof is None:
            raise EvaluationError("evaluate needs a model, or an out-of-fold CSV (--oof) to evaluate")
        if occlusion or cam or faithfulness:
            raise EvaluationError("--occlusion, --cam and --faithfulness run a model: give --model")
        return _evaluate_predictions(oof, out_dir, failures=failures, suspects=suspects, report=report)
    if not isinstance(model, OnnxModel):
        model = open_model(model)
    if data is None:
        raise EvaluationError("give the DATA folder to evaluate the model on")
    # Settings are checked before anything runs: a bad window must not cost a whole prediction.
    window, stride = resolve_window(model.card.input_size, window, stride)
    baseline = check_baseline(baseline)
    faith = FaithfulnessSettings(faithfulness_steps, seed) if faithfulness else None
    split = _open_cam(model, cam, cam_layer)
    out = Path(out_dir)
    names = list(model.card.class_names)
    # An already listed LabeledSamples (the command line shows what did not match) or a folder.
    samples = data if isinstance(data, LabeledSamples) else labeled_files(data, names, labels_csv)
    if samples.classes != names:
        raise ValueError("the labels of `data` must index the model's class names")
    paths, ys, skipped = samples.paths, samples.labels, dict(samples.skipped)
    # The audit and the OOF file are read before predicting: a wrong one must not cost a run.
    root = samples.root if samples.root is not None else Path(str(data))
    leaks = read_leaks(exclude_leaks, root) if exclude_leaks is not None else None
    oof_report = oof_suspects(oof, names) if suspects > 0 and oof is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if on_start:
        on_start(len(paths))
    preds = predict_files(model, paths, batch_size, workers, on_progress)
    t_write = time.perf_counter()
    r = _write_outputs(
        preds, dict(zip(paths, ys, strict=True)), names, model.card, str(model.path),
        str(samples.root if isinstance(data, LabeledSamples) else data), skipped, out,
        model=model, failures=failures, occlusion=occlusion, window=window, stride=stride,
        baseline=baseline, report=report, seed=seed, on_task=on_task, split=split, cam=cam,
        faith=faith, suspects=suspects, oof_report=oof_report, leaks=leaks,
        exclude_leaks=exclude_leaks, batch_size=batch_size,
    )  # fmt: skip
    r.times = preds.times
    r.times.writing = time.perf_counter() - t_write
    r.times.total += r.times.writing
    return r


def _evaluate_predictions(
    oof: str | os.PathLike, out_dir: str | os.PathLike, *, failures: int, suspects: int, report: bool
) -> EvalResult:
    """The evaluation of an out-of-fold CSV's probabilities (nothing is run)."""
    table = read_oof(oof)
    names = list(table.class_names)
    base = Path(oof).parent  # paths as training listed them; a moved run folder: next to the CSV
    paths = [Path(p if os.path.isabs(p) or os.path.exists(p) else base / p) for p in table.paths]
    preds = Predictions(paths=paths, probs=table.probs, provider="out-of-fold predictions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_of = suspect_report(str(oof), paths, table.labels, table.probs, names) if suspects > 0 else None
    # Thumbnails of failures and suspects only: a card with the classes and default preprocessing.
    display = ModelCard(class_names=tuple(names))
    return _write_outputs(
        preds, dict(zip(paths, table.labels.tolist(), strict=True)), names, display,
        f"out-of-fold predictions ({oof})", str(oof), {}, out, model=None, failures=failures,
        occlusion=0, window=None, stride=None, baseline="mean", report=report, seed=0, on_task=None,
        split=None, cam=0, faith=None, suspects=suspects, oof_report=report_of, leaks=None,
        exclude_leaks=None, batch_size=64,
    )  # fmt: skip


def _write_outputs(
    preds: Predictions,
    label_of: dict[Path, int],
    names: list[str],
    card: ModelCard,
    model_name: str,
    data_name: str,
    skipped: dict[str, int],
    out: Path,
    *,
    model: OnnxModel | None,
    failures: int,
    occlusion: int,
    window: int | None,
    stride: int | None,
    baseline: str,
    report: bool,
    seed: int,
    on_task: TaskStarter | None,
    split: CamModel | None,
    cam: int | None,
    faith: FaithfulnessSettings | None,
    suspects: int,
    oof_report: SuspectReport | None,
    leaks: Any,
    exclude_leaks: str | os.PathLike | None,
    batch_size: int,
) -> EvalResult:
    """Metrics, figures and the report from predictions; maps when a model is there to run."""
    y_true = np.array([label_of[p] for p in preds.paths], dtype=np.int64)
    probs = preds.probs
    y_pred = probs.argmax(axis=1) if len(preds.paths) else np.zeros(0, np.int64)
    loss = per_image_loss(y_true, probs)

    c = classification_metrics(y_true, y_pred, names)
    cm = c["confusion_matrix"]
    pm: dict[str, Any] = probability_metrics(y_true, probs) if len(y_true) else {}
    ranked = rank_failures(preds.paths, y_true, probs, loss)
    r = EvalResult(
        n=c["n"],
        accuracy=c["accuracy"],
        per_class={name: ClassScores(**s) for name, s in c["per_class"].items()},
        macro=Scores(**c["macro"]),
        weighted=Scores(**c["weighted"]),
        top5_accuracy=pm.get("top5_accuracy"),
        log_loss=pm.get("log_loss"),
        expected_calibration_error=pm.get("expected_calibration_error"),
        ece_bins=pm.get("ece_bins"),
        model=model_name,
        data=data_name,
        provider=preds.provider,
        images_per_s=preds.images_per_second,
        reliability=reliability_bins(y_true, probs),
        confusion_matrix=cm,
        most_confused=most_confused(cm, names),
        failures=ranked,
        skipped_files=skipped,
        failed_images=len(preds.failed),
        unreadable=dict(preds.failed),
    )
    write_csv(
        out / "confusion_matrix.csv",
        ["true\\pred", *names],
        [[n, *row] for n, row in zip(names, cm.tolist(), strict=True)],
    )
    write_csv(out / "most_confused.csv", ["true", "pred", "count"], r.most_confused)
    write_csv(out / "per_image.csv", *_per_image_rows(preds.paths, y_true, probs, loss, names))
    plot_confusion_matrix(cm, names, out / "confusion_matrix.png")
    plot_confusion_matrix(cm, names, out / "confusion_matrix_normalized.png", normalize=True)
    plot_reliability(r.reliability, r.expected_calibration_error or 0.0, out / "reliability.png")
    if card.calibration and len(y_true):
        # p = softmax(z / T), so softmax(T · log p) = softmax(z): the probabilities before calibration.
        raw = softmax(np.log(np.clip(probs, 1e-30, 1.0)) * np.float32(card.temperature))
        before = probability_metrics(y_true, raw)
        r.uncalibrated = {
            "temperature": card.temperature,
            "log_loss": before["log_loss"],
            "expected_calibration_error": before["expected_calibration_error"],
            "reliability": reliability_bins(y_true, raw),
        }
        plot_reliability(
            r.uncalibrated["reliability"], before["expected_calibration_error"],
            out / "reliability_uncalibrated.png",
        )  # fmt: skip
    r.files = list(ALWAYS)  # metrics.json is written last, with the occlusion settings
    if r.uncalibrated is not None:
        r.files.append("reliability_uncalibrated.png")

    if failures > 0:
        written = write_failures(out, ranked, names, card, failures)
        r.files += ["failures/", "failures.csv"] + (["top_losses.png"] if written.gallery else [])
    if suspects > 0:
        r.suspects = oof_report or suspect_report("evaluated images", preds.paths, y_true, probs, names)
        shown = write_suspects(out, r.suspects, names, card, suspects)
        r.files += ["suspects.csv"] + (["suspects.png"] if shown.gallery else [])
    if leaks is not None and exclude_leaks is not None:
        r.without_leaks = without_leaks(exclude_leaks, leaks, preds.paths, y_true, probs, names, out)
        r.files.append("leaked_images.csv")
    if model is not None and window is not None and stride is not None and occlusion > 0 and len(preds.paths):
        picks = _occlusion_picks(ranked, preds.paths, y_true, y_pred, occlusion, seed)
        total = len(picks) * num_positions(model.card.input_size, window, stride)
        advance = on_task("occlusion", total) if on_task else None
        with fresh_dir(out, "occlusion") as folder:
            maps, occ_failed = occlusion_maps(
                model.run, model.card, picks, folder, window, stride, baseline, batch_size, advance,
                faith=faith,
            )  # fmt: skip
        r.occlusion_maps = [m.moved_to(out / "occlusion") for m in maps]
        r.unreadable.update(occ_failed)
        r.occlusion = OcclusionSettings(window, stride, baseline, len(maps))
        r.files.append("occlusion/")
    if split is not None and len(preds.paths):
        picks = _occlusion_picks(ranked, preds.paths, y_true, y_pred, cam or DEFAULT_CAM, seed)
        advance = on_task("cam", len(picks)) if on_task else None
        with fresh_dir(out, "cam") as folder:
            cams, cam_failed = cam_maps(split, picks, folder, batch_size, faith, baseline, advance)
        r.cam_maps = [m.moved_to(out / "cam") for m in cams]
        r.unreadable.update(cam_failed)
        p = split.point
        r.cam = CamSettings(p.name, p.tensor, f"{p.height}×{p.width}", len(cams))
        r.files.append("cam/")
    if faith is not None:
        scored = {
            "cam": [c.faithfulness for m in r.cam_maps for c in m.classes if c.faithfulness],
            "occlusion": [c.faithfulness for m in r.occlusion_maps for c in m.classes if c.faithfulness],
        }
        r.faithfulness = {"steps": faith.steps, "seed": faith.seed, "baseline": baseline}
        r.faithfulness.update({k: {"maps": len(v), **mean_scores(v)} for k, v in scored.items() if v})

    atomic_write_text(out / "metrics.json", json.dumps(r.metrics_json(), indent=2, ensure_ascii=False))
    if r.unreadable:
        write_csv(
            out / "failed_images.csv", ["path", "reason"], [[str(p), why] for p, why in r.unreadable.items()]
        )
        r.files.append("failed_images.csv")
    if report:
        r.files.append("report.html")
    remove_stale(out, OUTPUTS, r.files)  # before the report, which mentions only files that exist
    if report:
        from cvtool.evaluation.report import write_report

        write_report(out / "report.html", r)
    return r
