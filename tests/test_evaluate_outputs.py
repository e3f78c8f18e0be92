"""Each evaluate run leaves exactly its own outputs; metrics.json keeps its keys."""

from __future__ import annotations

import json

import pytest
from conftest import CLASSES, make_image_folder
from helpers_evaluate import linear_model
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.run import evaluate
from cvtool.infer.session import open_model

runner = CliRunner()

ALWAYS = [
    "metrics.json",
    "per_image.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "most_confused.csv",
    "reliability.png",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Eight classes, three in the data: a random linear model that makes mistakes.
    names = (*CLASSES, "d", "e", "f", "g", "h")
    return linear_model(tmp_path_factory.mktemp("outputs") / "linear8.onnx", names, seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("outputs_data") / "data", per_class=6, seed=5)


def _names(out):
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())


def test_a_second_run_removes_the_outputs_it_does_not_write(model, folder, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", str(folder), "--model", str(model), "-o", str(out), "--window", "8", "--stride", "8"]
    r = runner.invoke(app, [*args, "--failures", "3", "--occlusion", "1"])
    assert r.exit_code == 0, r.output
    earlier = ("failures", "failures.csv", "top_losses.png", "occlusion")
    assert all((out / name).exists() for name in earlier)
    assert "see failures.csv" in (out / "report.html").read_text(encoding="utf-8")
    # The user's own files in the folder are none of evaluate's business.
    (out / "notes.txt").write_text("mine")
    (out / "failures_by_hand").mkdir()
    (out / "failures_by_hand" / "keep.png").write_bytes(b"x")

    r = runner.invoke(app, [*args, "--failures", "0", "--occlusion", "0"])
    assert r.exit_code == 0, r.output
    for name in earlier:
        assert not (out / name).exists(), name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "failures.csv" not in html and "Top " not in html and "Occlusion maps" not in html
    assert "misclassified images in all" in html  # the table itself is still shown
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "failures_by_hand" / "keep.png").read_bytes() == b"x"
    assert _names(out) == sorted([*ALWAYS, "report.html", "notes.txt", "failures_by_hand/"])


def test_no_report_removes_an_earlier_report(model, folder, tmp_path):
    m = open_model(model, device="cpu")
    evaluate(m, folder, tmp_path, failures=2)
    assert (tmp_path / "report.html").is_file()
    evaluate(m, folder, tmp_path, report=False)
    assert _names(tmp_path) == sorted(ALWAYS)


def test_metrics_json_keeps_its_keys_in_order(model, folder, tmp_path):
    evaluate(open_model(model, device="cpu"), folder, tmp_path, occlusion=1, window=8, stride=8)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved) == [
        "n", "accuracy", "per_class", "macro", "weighted", "top5_accuracy", "log_loss",
        "expected_calibration_error", "ece_bins", "model", "data", "failed_images", "skipped_files",
        "provider", "images_per_s", "reliability", "occlusion",
    ]  # fmt: skip
    assert list(saved["per_class"]) == [*CLASSES, "d", "e", "f", "g", "h"]
    assert list(saved["per_class"]["circle"]) == ["precision", "recall", "f1", "support"]
    assert list(saved["macro"]) == list(saved["weighted"]) == ["precision", "recall", "f1"]
    assert list(saved["reliability"]) == ["edges", "count", "confidence", "accuracy"]
    assert saved["occlusion"] == {"window": 8, "stride": 8, "baseline": "mean", "images": 2}
    assert saved["n"] == 18 and saved["failed_images"] == 0 and saved["skipped_files"] == {}
    assert saved["model"] == str(model) and saved["data"] == str(folder)


def test_metrics_json_without_probability_metrics_or_occlusion(tmp_path):
    # Three classes (no top-5) and no occlusion: those keys are absent, not null.
    model = linear_model(tmp_path / "m3.onnx", CLASSES, seed=1)
    data = make_image_folder(tmp_path / "data", per_class=2, seed=1)
    evaluate(open_model(model, device="cpu"), data, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(saved) == [
        "n", "accuracy", "per_class", "macro", "weighted", "log_loss", "expected_calibration_error",
        "ece_bins", "model", "data", "failed_images", "skipped_files", "provider", "images_per_s",
        "reliability",
    ]  # fmt: skip
