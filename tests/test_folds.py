"""k-fold cross-validation: stratified folds, out-of-fold predictions, cv.json, export, resume."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.data import stratified_kfold
from cvtool.evaluation.oof import read_oof
from cvtool.infer.predictor import Predictor

runner = CliRunner()
FAST = ["--arch", "mlp", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--seed", "1"]


def test_stratified_kfold_holds_every_index_out_once_in_balanced_folds():
    labels = [0] * 10 + [1] * 7 + [2] * 4
    folds = stratified_kfold(labels, 3, seed=5)
    assert sorted(i for f in folds for i in f) == list(range(len(labels)))  # each index exactly once
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in (0, 1, 2):
        per_fold = [sum(labels[i] == c for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
    assert stratified_kfold(labels, 3, seed=5) == folds and stratified_kfold(labels, 3, seed=6) != folds


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("folds")
    data = make_image_folder(d / "shapes", per_class=9, seed=4)
    run = d / "cv"
    r = runner.invoke(app, ["train", str(data), "--folds", "3", "--out", str(run), *FAST])
    assert r.exit_code == 0, r.output
    return data, run, r.output


def test_oof_has_every_training_image_once_and_cv_json_adds_up(cv_run):
    data, run, output = cv_run
    table = read_oof(run / "oof.csv", CLASSES)
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert sorted(table.paths) == files  # each training image exactly once
    assert Counter(table.folds.tolist()) == {1: 9, 2: 9, 3: 9}
    for c in range(len(CLASSES)):  # stratified: each class spread evenly over the folds
        assert Counter(table.folds[table.labels == c].tolist()) == {1: 3, 2: 3, 3: 3}
    cv = json.loads((run / "cv.json").read_text())
    accs = [f["accuracy"] for f in cv["folds"]]
    assert cv["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert cv["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert cv["log_loss"]["mean"] == pytest.approx(np.mean([f["log_loss"] for f in cv["folds"]]))
    # A fold's held-out accuracy is its run's best validation accuracy: the same images and model.
    for f in cv["folds"]:
        rows = list(csv.DictReader(open(run / f"fold-{f['fold']}" / "metrics.csv")))
        assert f["accuracy"] == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
        # The recomputed OOF accuracy agrees with the table's probabilities.
        mask = table.folds == f["fold"]
        right = table.probs[mask].argmax(1) == table.labels[mask]
        assert f["accuracy"] == pytest.approx(float(np.mean(right)))
    assert "3-fold CV: accuracy" in output


def test_oof_probabilities_equal_each_fold_exported_model(cv_run, tmp_path):
    _, run, _ = cv_run
    out = tmp_path / "folds"
    r = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.onnx")) == ["fold-1.onnx", "fold-2.onnx", "fold-3.onnx"]
    table = read_oof(run / "oof.csv", CLASSES)
    for k in (1, 2, 3):
        mask = table.folds == k
        paths = [p for p, m in zip(table.paths, mask, strict=True) if m]
        onnx_probs = Predictor(out / f"fold-{k}.onnx", device="cpu").predict(paths).probs
        np.testing.assert_allclose(onnx_probs, table.probs[mask], atol=1e-4)  # the export's parity bound


def test_resume_trains_only_the_unfinished_folds(cv_run, tmp_path):
    import shutil

    _, run, _ = cv_run
    copy = tmp_path / "cv"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "fold-3")
    (copy / "oof.csv").unlink()
    kept = (copy / "fold-1" / "best.pt").stat().st_mtime_ns
    r = runner.invoke(app, ["train", "--resume", str(copy)])
    assert r.exit_code == 0, r.output
    assert "fold 1/3: finished, kept" in r.output and "fold 2/3: finished, kept" in r.output
    assert (copy / "fold-1" / "best.pt").stat().st_mtime_ns == kept
    assert (copy / "fold-3" / "best.pt").is_file()
    assert len(read_oof(copy / "oof.csv", CLASSES).paths) == 27


def test_folds_refuse_a_subset_or_a_validation_folder(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=3)
    base = ["train", str(data), "--folds", "3", "--out", str(tmp_path / "r")]
    r = runner.invoke(app, [*base, "--subset", "5"])
    assert r.exit_code == 2 and "drop --subset" in r.output
    r = runner.invoke(app, [*base, "--val-dir", str(data)])
    assert r.exit_code == 2 and "drop --val-dir" in r.output


def test_evaluate_the_out_of_fold_predictions_without_a_model(cv_run, tmp_path):
    _, run, _ = cv_run
    out = tmp_path / "eval"
    r = runner.invoke(app, ["evaluate", "--oof", str(run / "oof.csv"), "-o", str(out), "--suspects", "5",
                            "--failures", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    table = read_oof(run / "oof.csv", CLASSES)
    metrics = json.loads((out / "metrics.json").read_text())
    # The pooled CV accuracy: every training image once, as its own fold's model scored it.
    assert metrics["accuracy"] == pytest.approx(float(np.mean(table.probs.argmax(1) == table.labels)))
    assert metrics["n"] == 27 and metrics["model"].startswith("out-of-fold predictions")
    assert len(list(csv.reader(open(out / "per_image.csv")))) == 27 + 1
    assert (out / "report.html").is_file() and (out / "suspects.csv").is_file()
    r = runner.invoke(app, ["evaluate", "--oof", str(run / "oof.csv"), "-o", str(out), "--occlusion", "2"])
    assert r.exit_code == 2 and "give --model" in r.output
    r = runner.invoke(app, ["evaluate", "-o", str(out)])
    assert r.exit_code == 2 and "--oof" in r.output
