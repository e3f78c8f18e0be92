"""Probability metrics against scikit-learn and a straightforward calibration loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cvtool.evaluation.metrics import (
    ECE_BINS,
    expected_calibration_error,
    log_loss,
    most_confused,
    per_image_loss,
    probability_metrics,
    reliability_bins,
    top_k_accuracy,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _probs(seed: int, n: int = 300, k: int = 8, absent: int | None = 5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax rows with a signal towards the true class; class `absent` never occurs in y_true."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(k) if c != absent]
    y = rng.choice(classes, size=n)
    logits = rng.normal(0, 1.5, (n, k))
    logits[np.arange(n), y] += rng.uniform(0, 4, n)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sk_log_loss(y, p, k):
    with warnings.catch_warnings():  # the probabilities' argument was renamed in scikit-learn 1.9
        warnings.simplefilter("ignore", FutureWarning)
        return sklearn_metrics.log_loss(y, p, labels=list(range(k)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k_top", [1, 3, 5])
def test_top_k_matches_sklearn(seed, k_top):
    y, p = _probs(seed)
    expected = sklearn_metrics.top_k_accuracy_score(y, p, k=k_top, labels=list(range(8)))
    assert top_k_accuracy(y, p, k_top) == pytest.approx(expected, abs=1e-12)


def test_top_k_ties_rank_like_sklearn():
    # Every row is a four-way tie: which classes are "top 2" depends on the tie rule.
    p = np.full((4, 4), 0.25, np.float32)
    y = np.array([0, 1, 2, 3])
    expected = sklearn_metrics.top_k_accuracy_score(y, p, k=2, labels=list(range(4)))
    assert top_k_accuracy(y, p, 2) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_loss_matches_sklearn(seed):
    y, p = _probs(seed)
    p64 = p.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)  # scikit-learn warns when float32 rows miss 1 by 1e-8
    assert log_loss(y, p64) == pytest.approx(_sk_log_loss(y, p64, 8), rel=1e-12)
    assert per_image_loss(y, p).mean() == pytest.approx(log_loss(y, p), rel=1e-12)


def test_log_loss_of_a_zero_probability_is_finite_and_clipped_like_sklearn():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([1, 0])
    loss = log_loss(y, p)
    assert np.isfinite(loss)
    assert loss == pytest.approx(_sk_log_loss(y, p, 2), rel=1e-9)


def _ece_reference(y, p, n_bins=15):
    """Guo et al. (2017), written out bin by bin."""
    conf = p.max(axis=1).astype(np.float64)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = [i for i in range(len(y)) if lo < conf[i] <= hi]
        if members:
            acc = np.mean([correct[i] for i in members])
            avg = np.mean([conf[i] for i in members])
            total += len(members) / len(y) * abs(acc - avg)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ece_matches_a_straightforward_loop(seed):
    y, p = _probs(seed)
    assert ECE_BINS == 15
    assert expected_calibration_error(y, p) == pytest.approx(_ece_reference(y, p), abs=1e-12)


def test_reliability_bins_put_a_confidence_on_an_edge_in_the_lower_bin():
    edge = np.linspace(0, 1, 16)[10]  # 2/3
    p = np.array([[edge, 1 - edge], [0.99, 0.01], [0.99, 0.01]])
    y = np.array([0, 0, 1])
    bins = reliability_bins(y, p)
    assert bins["count"][9] == 1 and bins["count"][10] == 0 and bins["count"][14] == 2
    assert bins["accuracy"][14] == pytest.approx(0.5)
    assert bins["confidence"][14] == pytest.approx(0.99)
    assert bins["accuracy"][0] is None
    assert expected_calibration_error(y, p) == pytest.approx(_ece_reference(y, p))


def test_ece_is_zero_when_confidence_equals_accuracy():
    # 10 rows at confidence 0.8 of which 8 are right.
    p = np.tile([[0.8, 0.2]], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_probability_metrics_has_top5_only_above_five_classes():
    y, p = _probs(0, k=8)
    m = probability_metrics(y, p)
    assert m["top5_accuracy"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(y, p, k=5, labels=list(range(8)))
    )
    assert m["ece_bins"] == 15
    y5, p5 = _probs(0, k=5, absent=None)
    assert "top5_accuracy" not in probability_metrics(y5, p5)


def test_most_confused_lists_off_diagonal_cells_largest_first():
    y, p = _probs(4)
    pred = p.argmax(axis=1)
    cm = sklearn_metrics.confusion_matrix(y, pred, labels=list(range(8)))
    names = [f"c{i}" for i in range(8)]
    pairs = most_confused(cm, names)
    assert sum(n for _, _, n in pairs) == int((y != pred).sum())
    assert [n for _, _, n in pairs] == sorted((n for _, _, n in pairs), reverse=True)
    for t, q, n in pairs:
        assert t != q and cm[names.index(t), names.index(q)] == n
    assert all(t != "c5" for t, _, _ in pairs)  # the absent class is never a true class
