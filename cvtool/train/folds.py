"""k-fold cross-validation: K ordinary runs, out-of-fold predictions and a CV score.

`cvtool train DATA --folds K --out RUN` splits the training images into K stratified, seeded
folds (cvtool.data.stratified_kfold). Fold k is a whole training run in RUN/fold-<k>/ that
validates on its held-out fold (so its best.pt is picked on images it never trained on). Then
each fold's best.pt predicts its held-out images: RUN/oof.csv has every training image exactly
once (cvtool.evaluation.oof), and RUN/cv.json the per-fold and mean ± std accuracy and log loss.
`--resume RUN` goes on with the first unfinished fold; finished folds are kept as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.atomic import atomic_write_text
from cvtool.data import labeled_files, stratified_kfold
from cvtool.evaluation.metrics import log_loss
from cvtool.evaluation.oof import write_oof
from cvtool.softmax import softmax
from cvtool.train.checkpoint import load_checkpoint
from cvtool.train.config import TrainConfig, TrainError
from cvtool.train.distributed import resolve_device
from cvtool.train.logits import checkpoint_logits
from cvtool.train.loop import config_from_checkpoint, train

__all__ = ["CvResult", "FoldScore", "cv_config", "fold_dir", "is_cv_run", "train_folds"]

CV_FILE = "cv.json"


def fold_dir(run: str | Path, k: int) -> Path:
    return Path(run) / f"fold-{k}"


def is_cv_run(run: str | Path) -> bool:
    """A k-fold run folder: RUN/config.json says `folds` (and each fold has its own folder)."""
    try:
        return bool(json.loads((Path(run) / "config.json").read_text()).get("folds"))
    except (OSError, ValueError):
        return False


def cv_config(run: str | Path) -> TrainConfig:
    """The settings a k-fold run was started with (its folds continue in `run`)."""
    settings = json.loads((Path(run) / "config.json").read_text())
    return TrainConfig(**{**settings, "out": str(run)})


@dataclass
class FoldScore:
    fold: int
    n: int  # held-out images predicted
    accuracy: float
    log_loss: float
    best_epoch: int | None


@dataclass
class CvResult:
    out: Path
    folds: list[FoldScore]
    skipped_images: list[str] = field(default_factory=list)  # unreadable: in no fold's predictions

    def mean_std(self, key: str) -> tuple[float, float]:
        values = np.array([getattr(f, key) for f in self.folds], np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _finished(run: Path) -> bool:
    try:
        return bool(json.loads((run / "run.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def train_folds(
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> CvResult:
    """Train the K folds of `cfg` (cfg.folds) in cfg.out/fold-<k>/, then write oof.csv and cv.json."""
    k_folds = cfg.folds
    if k_folds is None:
        raise TrainError("train_folds needs cfg.folds")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    skipped: list[str] = []
    for k in range(1, k_folds + 1):
        run = fold_dir(out, k)
        if resume and _finished(run):
            log(f"fold {k}/{k_folds}: finished, kept")
            continue
        log(f"fold {k}/{k_folds}")
        if resume and (run / "last.pt").is_file():
            fold_cfg, state = config_from_checkpoint(run)
            trained = train(fold_cfg, log, resume=state, on_epoch_end=on_epoch_end)
        else:
            fold_cfg = dataclasses.replace(cfg, out=str(run), fold=k)
            trained = train(fold_cfg, log, on_epoch_end=on_epoch_end)
        skipped += [s for s in trained.skipped_images if s not in skipped]

    # The held-out fold of every image, exactly as each fold's run split it.
    samples = labeled_files(cfg.data, None, cfg.label_source())
    folds = stratified_kfold(samples.labels, k_folds, cfg.seed)
    device = resolve_device(cfg.device)
    rows: list[tuple[int, int, np.ndarray]] = []  # (sample index, fold, logits)
    scores = []
    for k, held in enumerate(folds, start=1):
        ok, logits = checkpoint_logits(fold_dir(out, k) / "best.pt", [samples.paths[i] for i in held], device)
        idx = [held[j] for j in ok]
        y = np.array([samples.labels[i] for i in idx], np.int64)
        probs = softmax(logits)
        best = load_checkpoint(fold_dir(out, k) / "best.pt").get("epoch")
        scores.append(
            FoldScore(k, len(idx), float(np.mean(probs.argmax(1) == y)) if len(y) else math.nan,
                      log_loss(y, probs) if len(y) else math.nan, best)
        )  # fmt: skip
        rows += [(i, k, logits[j]) for j, i in enumerate(idx)]
    rows.sort(key=lambda r: r[0])
    write_oof(
        out / "oof.csv",
        [str(samples.paths[i]) for i, _, _ in rows],
        [samples.labels[i] for i, _, _ in rows],
        [k for _, k, _ in rows],
        np.stack([lo for _, _, lo in rows]) if rows else np.zeros((0, len(samples.classes)), np.float32),
        samples.classes,
    )
    result = CvResult(out=out, folds=scores, skipped_images=skipped)
    summary = {
        "folds": [dataclasses.asdict(s) for s in scores],
        "accuracy": dict(zip(("mean", "std"), result.mean_std("accuracy"), strict=True)),
        "log_loss": dict(zip(("mean", "std"), result.mean_std("log_loss"), strict=True)),
        "k": k_folds,
        "images": len(rows),
        "oof": "oof.csv",
    }
    atomic_write_text(out / CV_FILE, json.dumps(summary, indent=2))
    return result
