"""`train --calibrate`: temperature scaling fitted on the run's validation images after training.

best.pt's card gets the `calibration` entry (cvtool.evaluation.calibration), and card.json with
it, so the exported model is calibrated and predict applies T. The validation images picked
best.pt too, so the figures are optimistic by that much; k-fold runs calibrate better on their
out-of-fold predictions (`cvtool calibrate MODEL --oof RUN/oof.csv`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cvtool.atomic import atomic_write_text
from cvtool.evaluation.calibration import CalibrationResult, fit_result
from cvtool.train.checkpoint import load_checkpoint, save_checkpoint
from cvtool.train.logits import checkpoint_logits

__all__ = ["calibrate_run"]


def calibrate_run(
    run: Path, val_paths: list[Path], val_labels: list[int], device: torch.device
) -> CalibrationResult:
    """Fit T on best.pt's validation logits; write it into best.pt's and card.json's card."""
    ok, logits = checkpoint_logits(run / "best.pt", val_paths, device)
    result = fit_result(logits, np.array([val_labels[i] for i in ok], np.int64), "validation split")
    ckpt = load_checkpoint(run / "best.pt")
    ckpt["card"] = {**ckpt["card"], "calibration": result.card_entry()}
    save_checkpoint(run / "best.pt", ckpt)
    atomic_write_text(run / "card.json", json.dumps(ckpt["card"], indent=2, ensure_ascii=False))
    return result
