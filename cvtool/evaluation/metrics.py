"""Classification metrics from labels and probabilities, in numpy (scikit-learn-compatible definitions).

Conventions match scikit-learn's `confusion_matrix`, `precision_recall_fscore_support`,
`top_k_accuracy_score` and `log_loss` with `labels=range(K)` and `zero_division=0`: a class never
predicted has precision 0, a class absent from the data has recall 0 and support 0, and it is still
listed. Calibration follows Guo et al. (2017): 15 equal-width confidence bins (lo, hi].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ECE_BINS",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "log_loss",
    "most_confused",
    "per_image_loss",
    "probability_metrics",
    "reliability_bins",
    "top_k_accuracy",
]

ECE_BINS = 15
# Probabilities are clipped to [eps, 1 - eps] before the log, as scikit-learn does for float64.
_EPS = float(np.finfo(np.float64).eps)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # true count per class
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    n = int(support.sum())
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    weights = support / n if n else np.zeros(k)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "per_class": per_class,
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "confusion_matrix": cm,
    }


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest probabilities.

    Ties rank as in scikit-learn's `top_k_accuracy_score` (stable ascending sort, reversed: among
    equal probabilities the higher class index comes first), so the two agree exactly.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    top = np.argsort(np.asarray(probs, dtype=np.float64), axis=1, kind="stable")[:, ::-1][:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def per_image_loss(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row, -log p(true), float64 (N,); p clipped to [eps, 1 - eps]."""
    y_true = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(p, _EPS, 1 - _EPS))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy (natural log), as scikit-learn's `log_loss` with labels=range(K)."""
    if len(probs) == 0:
        return 0.0
    return float(per_image_loss(y_true, probs).mean())


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Per-bin count, mean confidence and accuracy over equal-width confidence bins (lo, hi].

    Confidence is the top probability; bin b holds rows with b/n_bins < confidence <= (b+1)/n_bins.
    Empty bins have count 0 and confidence/accuracy None.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y_true) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Number of inner edges strictly below conf: a value exactly on an edge goes to the lower
    # bin, (lo, hi]; confidence 0 (impossible for a softmax) would land in the first bin.
    b = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(b, weights=correct.astype(np.float64), minlength=n_bins)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)],
        "accuracy": [float(s / c) if c else None for s, c in zip(acc_sum, count, strict=True)],
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence|."""
    bins = reliability_bins(y_true, probs, n_bins)
    n = sum(bins["count"])
    if n == 0:
        return 0.0
    return float(
        sum(
            c / n * abs(a - f)
            for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
            if c
        )
    )


def probability_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Metrics that need the probabilities: top-5 (when more than 5 classes), log loss, ECE."""
    k = probs.shape[1]
    out: dict[str, Any] = {}
    if k > 5:
        out["top5_accuracy"] = top_k_accuracy(y_true, probs, 5)
    out["log_loss"] = log_loss(y_true, probs)
    out["expected_calibration_error"] = expected_calibration_error(y_true, probs, ECE_BINS)
    out["ece_bins"] = ECE_BINS
    return out


def most_confused(cm: np.ndarray, class_names: Sequence[str]) -> list[tuple[str, str, int]]:
    """Off-diagonal cells with a count, as (true, predicted, count), largest first."""
    cells = [
        (int(cm[i, j]), i, j)
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    # Largest count first; ties in class order, so the list is deterministic.
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(class_names[i], class_names[j], n) for n, i, j in cells]
