"""`evaluate`: metrics and confusion matrix equal scikit-learn's on the same predictions."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.data import DataError
from cvtool.evaluation.outputs import safe_filename
from cvtool.evaluation.run import evaluate
from cvtool.infer.session import open_model

runner = CliRunner()


def test_metrics_match_sklearn(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    m = open_model(rgb_model, device="cpu")
    r = evaluate(m, test_dir, tmp_path, labels_csv=labels, batch_size=7)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == r.n == 24
    idx = {c: i for i, c in enumerate(CLASSES)}
    y_true = [idx[row["true"]] for row in rows]
    y_pred = [idx[row["pred"]] for row in rows]
    truth = {k: v for k, v in csv.reader(labels.open())}
    assert all(truth[row["path"].rsplit("/", 1)[-1][:-4]] == row["true"] for row in rows)

    assert r.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    p, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=range(3), zero_division=0)
    for i, c in enumerate(CLASSES):
        pc = r.per_class[c]
        assert pc.precision == pytest.approx(p[i])
        assert pc.recall == pytest.approx(rec[i])
        assert pc.f1 == pytest.approx(f1[i])
        assert pc.support == sup[i]
    cm = confusion_matrix(y_true, y_pred, labels=range(3))
    np.testing.assert_array_equal(r.confusion_matrix, cm)
    csv_cm = [
        [int(v) for v in row[1:]] for row in list(csv.reader((tmp_path / "confusion_matrix.csv").open()))[1:]
    ]
    np.testing.assert_array_equal(np.array(csv_cm), cm)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(r.accuracy) and saved["provider"] == "CPUExecutionProvider"
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


def test_evaluate_verbose_prints_where_the_time_went(rgb_model, shapes_train, tmp_path):
    cmd = ["evaluate", str(shapes_train), "--model", str(rgb_model), "-o", str(tmp_path), "-v"]
    r = runner.invoke(app, cmd)
    assert r.exit_code == 0, r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("time ")]
    assert "decode + preprocess" in line and "metrics, plots, maps and report" in line


def test_unknown_class_folder_is_an_error(rgb_model, shapes_train, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_train / "circle", data / "triangle")
    with pytest.raises(DataError, match="triangle"):
        evaluate(open_model(rgb_model, device="cpu"), data, tmp_path / "out")
    r = runner.invoke(app, ["evaluate", str(data), "--model", str(rgb_model), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "triangle" in r.output


# --- many classes, probabilities, failures, occlusion, report (hand-built ONNX model, no torch) ---

MANY = (*CLASSES, "d", "e", 'a<b>&"c', "f", "g")  # 8 classes; only the first three occur in the data


@pytest.fixture(scope="module")
def many_model(tmp_path_factory):
    from helpers_evaluate import linear_model

    return linear_model(tmp_path_factory.mktemp("many") / "linear8.onnx", MANY, channels=3, size=32, seed=3)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    from conftest import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("small") / "data", per_class=12, seed=5)


def _reference_probs(model_path, paths):
    """Probabilities computed without cvtool's pipeline: ONNX Runtime on the shared preprocessing."""
    import onnxruntime as ort

    from cvtool.images import load_and_preprocess
    from cvtool.infer.session import open_model

    card = open_model(model_path, device="cpu").card
    x = np.stack([load_and_preprocess(p, card) for p in paths])
    (logits,) = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_probability_metrics_and_per_image_csv_match_sklearn(many_model, small_folder, tmp_path):
    from sklearn.metrics import log_loss, top_k_accuracy_score

    r = evaluate(open_model(many_model, device="cpu"), small_folder, tmp_path, batch_size=5)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    paths = [Path(row["path"]) for row in rows]
    y = np.array([MANY.index(p.parent.name) for p in paths])
    probs = _reference_probs(many_model, paths)
    pred = probs.argmax(axis=1)
    labels = list(range(len(MANY)))

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n"] == len(rows) == 36
    assert saved["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert saved["top5_accuracy"] == pytest.approx(top_k_accuracy_score(y, probs, k=5, labels=labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert saved["log_loss"] == pytest.approx(log_loss(y, probs, labels=labels), rel=1e-5)
    p, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(MANY):
        assert saved["per_class"][c]["precision"] == pytest.approx(p[i])
        assert saved["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert saved["per_class"][c]["f1"] == pytest.approx(f1[i])
        assert saved["per_class"][c]["support"] == sup[i]
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        assert saved[avg] == pytest.approx({"precision": pa, "recall": ra, "f1": fa})
    np.testing.assert_array_equal(r.confusion_matrix, confusion_matrix(y, pred, labels=labels))
    # ECE: 15 bins, written out.
    conf, ok = probs.max(axis=1), pred == y
    edges = np.linspace(0, 1, 16)
    ece = sum(
        m.sum() / len(y) * abs(ok[m].mean() - conf[m].mean())
        for m in ((conf > lo) & (conf <= hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True))
        if m.any()
    )
    assert saved["expected_calibration_error"] == pytest.approx(ece, abs=1e-5)
    assert saved["ece_bins"] == 15 and sum(saved["reliability"]["count"]) == 36

    assert list(rows[0]) == ["path", "true", "pred", "p_true", "p_pred", "loss"] + [
        f"{a}{j}" for j in range(1, 6) for a in ("top", "p_top")
    ]
    for row, pr, t in zip(rows, probs, y, strict=True):
        assert row["true"] == MANY[t] and row["pred"] == MANY[pr.argmax()] == row["top1"]
        assert float(row["p_true"]) == pytest.approx(pr[t], abs=2e-6)
        assert float(row["loss"]) == pytest.approx(-np.log(pr[t]), rel=1e-4)
        assert [row[f"top{j}"] for j in range(1, 6)] == [MANY[c] for c in np.argsort(-pr, kind="stable")[:5]]
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png", "reliability.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.html").is_file()


def _matrix(path):
    return np.array([[int(v) for v in row[1:]] for row in list(csv.reader(path.open()))[1:]])


def test_failures_folder_counts_equal_the_off_diagonal_total(many_model, small_folder, tmp_path):
    r = evaluate(open_model(many_model, device="cpu"), small_folder, tmp_path, failures=1000)
    cm = _matrix(tmp_path / "confusion_matrix.csv")
    off = int(cm.sum() - np.trace(cm))
    assert off > 5  # the random model makes mistakes, so the test means something
    copies = [p for p in (tmp_path / "failures").rglob("*") if p.is_file()]
    assert len(copies) == off == len(r.failures)
    for folder in (tmp_path / "failures").iterdir():
        t, q = folder.name.split("__as__")
        safe = [safe_filename(n) for n in MANY]
        assert len(list(folder.iterdir())) == cm[safe.index(t), safe.index(q)]
    rows = list(csv.DictReader((tmp_path / "failures.csv").open()))
    assert len(rows) == off
    losses = [float(row["loss"]) for row in rows]
    assert losses == sorted(losses, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, off + 1))
    first = tmp_path / rows[0]["copy"]
    assert first.read_bytes() == Path(rows[0]["path"]).read_bytes()
    assert first.name.startswith("01_loss" if off < 100 else "001_loss")
    confused = list(csv.reader((tmp_path / "most_confused.csv").open()))
    assert confused[0] == ["true", "pred", "count"]
    assert sum(int(c) for _, _, c in confused[1:]) == off
    assert (tmp_path / "top_losses.png").read_bytes()[:4] == b"\x89PNG"

    # A second run with K = 3 replaces the folder: three copies, but failures.csv still lists all.
    evaluate(open_model(many_model, device="cpu"), small_folder, tmp_path, failures=3)
    assert len([p for p in (tmp_path / "failures").rglob("*") if p.is_file()]) == 3
    rows = list(csv.DictReader((tmp_path / "failures.csv").open()))
    assert len(rows) == off and sum(bool(row["copy"]) for row in rows) == 3
    assert not list(tmp_path.glob(".failures.*"))


def test_occlusion_maps_for_worst_failures_and_random_correct_images(many_model, small_folder, tmp_path):
    r = evaluate(
        open_model(many_model, device="cpu"), small_folder, tmp_path, occlusion=2, window=8, stride=8
    )
    occ = tmp_path / "occlusion"
    rows = list(csv.DictReader((occ / "occlusion.csv").open()))
    failures = [row for row in rows if row["name"].startswith("failure_")]
    correct = [row for row in rows if row["name"].startswith("correct_")]
    assert len({row["name"] for row in failures}) == 2 and len({row["name"] for row in correct}) == 2
    assert len(failures) == 4  # true and predicted class for each failure
    assert {row["path"] for row in failures} == {str(f.path) for f in r.failures[:2]}
    for row in rows:
        a = np.load(occ / row["npy"])
        assert a.shape == (32, 32) and a.dtype == np.float32
        assert float(row["p_min_occluded"]) == pytest.approx(a.min(), abs=1e-6)
        assert (occ / row["png"]).is_file()
    assert dataclasses.asdict(r.occlusion) == {"window": 8, "stride": 8, "baseline": "mean", "images": 4}


def test_cli_evaluate_failures_occlusion_report(many_model, small_folder, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", str(small_folder), "--model", str(many_model), "-o", str(out)]
    r = runner.invoke(app, [*args, "--failures", "4", "--occlusion", "1", "--window", "16", "--stride", "8"])
    assert r.exit_code == 0, r.output
    assert "top-5" in r.output and "log loss" in r.output and "ECE" in r.output
    assert "report.html" in r.output
    assert len([p for p in (out / "failures").rglob("*") if p.is_file()]) == 4
    assert len(list((out / "occlusion").glob("*.png"))) == 2
    html = (out / "report.html").read_text()
    assert "a&lt;b&gt;&amp;&quot;c" in html and 'a<b>&"c' not in html
    r = runner.invoke(app, [*args, "--occlusion", "1", "--window", "8", "--stride", "9"])
    assert r.exit_code == 2 and "stride" in r.output
    r = runner.invoke(app, [*args, "--baseline", "grey"])
    assert r.exit_code == 2 and "baseline" in r.output


def test_unreadable_image_is_listed_and_exit_code_is_1(many_model, small_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_folder, data)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = runner.invoke(app, ["evaluate", str(data), "--model", str(many_model), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1
    failed = list(csv.reader((tmp_path / "out" / "failed_images.csv").open()))
    assert len(failed) == 2 and failed[1][0].endswith("broken.png")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n"] == 36
