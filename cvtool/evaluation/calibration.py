"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017).

One number T > 0 divides the logits before the softmax. It is fitted by minimising the negative
log-likelihood on held-out data, so accuracy cannot change (the argmax is the same), log loss
cannot get worse on that data (T = 1 is a candidate), and an over-confident network (T > 1)
stops losing log-loss points it need not lose. `cvtool calibrate` writes T into the card; the
graph is not changed, and predict and evaluate apply it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data import LabelSource, labeled_files
from cvtool.decode import decode_batches
from cvtool.errors import CvtoolError
from cvtool.evaluation.metrics import expected_calibration_error, log_loss
from cvtool.evaluation.oof import read_oof
from cvtool.infer.session import OnnxModel
from cvtool.onnxtools.card_edit import set_card
from cvtool.softmax import softmax

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "calibrate",
    "fit_result",
    "fit_temperature",
    "model_logits",
]

# 1/T is searched in [1e-3, 1e3]: far beyond any temperature a classifier needs.
_LOG_BETA = (-3 * np.log(10), 3 * np.log(10))


def _nll_slope(logits: np.ndarray, labels: np.ndarray, beta: float) -> float:
    """d/dβ of mean NLL(softmax(β z)): E_p[z] − z_y, averaged; increasing in β (NLL is convex)."""
    p = softmax(beta * logits).astype(np.float64)
    expected = (p * logits).sum(axis=1)
    return float(np.mean(expected - logits[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the mean NLL of softmax(logits / T); (N, K) logits, (N,) int labels.

    The NLL is convex in β = 1/T, so its minimum is where the slope crosses zero: bisection on
    log β, to 1e-6 relative. Data the model classifies perfectly has no minimum (the NLL falls
    forever as β grows); the search then stops at its edge, T = 1e-3.
    """
    z = logits.astype(np.float64)
    lo, hi = _LOG_BETA
    if _nll_slope(z, labels, float(np.exp(hi))) < 0:
        return float(np.exp(-hi))
    if _nll_slope(z, labels, float(np.exp(lo))) > 0:
        return float(np.exp(-lo))
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if _nll_slope(z, labels, float(np.exp(mid))) > 0:
            hi = mid
        else:
            lo = mid
    return float(np.exp(-(lo + hi) / 2))


class CalibrationError(CvtoolError, ValueError):
    """Nothing to calibrate on, or a model whose output is not logits."""


@dataclass
class CalibrationResult:
    temperature: float
    n: int  # images (or out-of-fold rows) it was fitted on
    fitted_on: str
    accuracy: float  # the same before and after, by construction
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    note: str = ""  # why T = 1 was kept, when it was
    output: Path | None = None
    failed: dict[Path, str] = field(default_factory=dict)  # images that could not be read

    def card_entry(self) -> dict[str, Any]:
        """What the card's `calibration` holds."""
        return {
            "method": "temperature",
            "temperature": round(self.temperature, 6),
            "fitted_on": self.fitted_on,
            "n": self.n,
            "nll_before": round(self.nll_before, 6),
            "nll_after": round(self.nll_after, 6),
            "ece_before": round(self.ece_before, 6),
            "ece_after": round(self.ece_after, 6),
        }


def model_logits(
    model: OnnxModel,
    paths: list[Path],
    batch_size: int = 64,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[Path], np.ndarray, dict[Path, str]]:
    """(files that decoded, their (N, K) logits, {file: reason} for those that did not)."""
    done: list[Path] = []
    out: list[np.ndarray] = []
    failed: dict[Path, str] = {}
    for ok, batch, bad in decode_batches(paths, model.card, batch_size, workers):
        failed.update(bad)
        if ok:
            done += ok
            out.append(model.outputs(batch))
        if on_progress:
            on_progress(len(ok) + len(bad))
    k = model.card.num_classes
    return done, np.concatenate(out) if out else np.zeros((0, k), np.float32), failed


def fit_result(logits: np.ndarray, labels: np.ndarray, fitted_on: str) -> CalibrationResult:
    """Fit T on (N, K) logits and labels, with the figures before and after (T = 1 if it hurt ECE)."""
    if len(labels) == 0:
        raise CalibrationError(f"{fitted_on}: no image could be read to calibrate on")
    before = softmax(logits)
    t = fit_temperature(logits, labels)
    after = softmax(logits / np.float32(t))
    ece_before = expected_calibration_error(labels, before)
    ece_after = expected_calibration_error(labels, after)
    note = ""
    if ece_after > ece_before:
        # The NLL optimum can still move binned calibration the wrong way (few images, or a
        # model already calibrated): then T = 1, which changes nothing, is the honest result.
        t, after, ece_after = 1.0, before, ece_before
        note = "the fitted temperature made the calibration error worse here; T = 1 kept"
    return CalibrationResult(
        temperature=t,
        n=len(labels),
        fitted_on=fitted_on,
        accuracy=float(np.mean(before.argmax(1) == labels)),
        nll_before=log_loss(labels, before),
        nll_after=log_loss(labels, after),
        ece_before=ece_before,
        ece_after=ece_after,
        note=note,
    )


def calibrate(
    model: OnnxModel,
    out_path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    labels: LabelSource | str | os.PathLike | None = None,
    *,
    oof: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Fit T on `data` (labeled images, held out from training) or on an out-of-fold CSV, and
    write the model with T in its card to `out_path` (the graph is copied unchanged)."""
    names = model.card.class_names
    if model.card.output != "logits":
        raise CalibrationError(f"{model.path}: its output is probabilities; a temperature needs logits")
    if oof is not None:
        table = read_oof(oof, names)
        result = fit_result(table.logits, table.labels, str(oof))
        failed: dict[Path, str] = {}
    else:
        assert data is not None, "calibrate needs data or an out-of-fold file"
        samples = labeled_files(data, names, labels)
        if on_start:
            on_start(len(samples))
        label_of = dict(zip(samples.paths, samples.labels, strict=True))
        done, logits, failed = model_logits(model, samples.paths, batch_size, workers, on_progress)
        result = fit_result(logits, np.array([label_of[p] for p in done], np.int64), str(data))
    result.failed = failed
    # The card the model was run with (the file's, or the CLI's for a file without one), plus T.
    card = {**model.card.to_dict(), "jpeg_draft": model.card.jpeg_draft, "calibration": result.card_entry()}
    set_card(model.path, card, out_path)
    result.output = Path(out_path)
    return result
