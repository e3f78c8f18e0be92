"""`evaluate`: metrics and confusion matrix equal scikit-learn's on the same predictions."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import CLASSES
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.data import DataError
from cvtool.evaluate.run import evaluate
from cvtool.infer.session import open_model

runner = CliRunner()


def test_metrics_match_sklearn(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    m = open_model(rgb_model, device="cpu")
    r = evaluate(m, test_dir, tmp_path, labels_csv=labels, batch_size=7)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == r["n"] == 24
    idx = {c: i for i, c in enumerate(CLASSES)}
    y_true = [idx[row["true"]] for row in rows]
    y_pred = [idx[row["pred"]] for row in rows]
    truth = {k: v for k, v in csv.reader(labels.open())}
    assert all(truth[row["path"].rsplit("/", 1)[-1][:-4]] == row["true"] for row in rows)

    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    p, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=range(3), zero_division=0)
    for i, c in enumerate(CLASSES):
        pc = r["per_class"][c]
        assert pc["precision"] == pytest.approx(p[i])
        assert pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == sup[i]
    cm = confusion_matrix(y_true, y_pred, labels=range(3))
    np.testing.assert_array_equal(r["confusion_matrix"], cm)
    csv_cm = [
        [int(v) for v in row[1:]] for row in list(csv.reader((tmp_path / "confusion_matrix.csv").open()))[1:]
    ]
    np.testing.assert_array_equal(np.array(csv_cm), cm)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(r["accuracy"]) and saved["provider"] == "CPUExecutionProvider"
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_folder_with_a_class_absent(rgb_model, shapes_train, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_train / "circle", data / "circle")
    shutil.copytree(shapes_train / "square", data / "square")  # no "stripes" folder
    r = runner.invoke(app, ["evaluate", str(data), "--model", str(rgb_model), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 80
    assert metrics["per_class"]["stripes"]["support"] == 0
    assert "accuracy" in r.output and "stripes" in r.output


def test_unknown_class_folder_is_an_error(rgb_model, shapes_train, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_train / "circle", data / "triangle")
    with pytest.raises(DataError, match="triangle"):
        evaluate(open_model(rgb_model, device="cpu"), data, tmp_path / "out")
    r = runner.invoke(app, ["evaluate", str(data), "--model", str(rgb_model), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "triangle" in r.output
