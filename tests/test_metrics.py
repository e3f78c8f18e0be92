"""Classification metrics against scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from cvtool.evaluation.metrics import classification_metrics, confusion_matrix

sklearn_metrics = pytest.importorskip("sklearn.metrics")

K = 5
NAMES = [f"c{i}" for i in range(K)]


def _labels(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Random labels where class 3 never occurs in y_true and class 4 is never predicted."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 2, 4], size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, K, n))
    y_pred[y_pred == 4] = 3
    assert 3 not in y_true and 4 not in y_pred and 3 in y_pred and 4 in y_true
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn(seed):
    y_true, y_pred = _labels(seed)
    cm = confusion_matrix(y_true, y_pred, K)
    assert cm.shape == (K, K)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(K)))
    assert cm[3].sum() == 0 and cm[:, 4].sum() == 0


def test_confusion_matrix_orientation():
    # Rows are true classes, columns predicted.
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    y_true, y_pred = _labels(seed)
    m = classification_metrics(y_true, y_pred, NAMES)
    labels = list(range(K))

    assert m["n"] == len(y_true)
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))

    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    assert list(m["per_class"]) == NAMES
    for i, name in enumerate(NAMES):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(p[i], abs=1e-12)
        assert pc["recall"] == pytest.approx(r[i], abs=1e-12)
        assert pc["f1"] == pytest.approx(f[i], abs=1e-12)
        assert pc["support"] == s[i]
        assert isinstance(pc["support"], int)

    # The absent class has support 0 and recall 0; the never-predicted class precision 0.
    assert m["per_class"]["c3"]["support"] == 0
    assert m["per_class"]["c3"]["recall"] == 0.0
    assert m["per_class"]["c4"]["precision"] == 0.0
    assert m["per_class"]["c4"]["f1"] == 0.0

    for avg in ("macro", "weighted"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        assert m[avg]["precision"] == pytest.approx(p, abs=1e-12)
        assert m[avg]["recall"] == pytest.approx(r, abs=1e-12)
        assert m[avg]["f1"] == pytest.approx(f, abs=1e-12)

    np.testing.assert_array_equal(
        m["confusion_matrix"], sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels)
    )


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1])
    m = classification_metrics(y, y, ["a", "b", "c"])
    assert m["accuracy"] == 1.0
    assert m["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert m["weighted"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_empty_input():
    m = classification_metrics(np.array([], int), np.array([], int), ["a", "b"])
    assert m["n"] == 0
    assert m["accuracy"] == 0.0
    assert m["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m["confusion_matrix"].tolist() == [[0, 0], [0, 0]]
