"""The whole slice on generated images: train → export → predict → evaluate, via the CLI."""

from __future__ import annotations

import csv
import json

import torch
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import ModelCard

runner = CliRunner()


def test_train_export_predict_evaluate(shapes_train, shapes_test, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", str(shapes_train), "--out", str(run), "--epochs", "8", "--batch-size", "16",
         "--lr", "3e-3", "--workers", "0", "--seed", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json", "card.json"):
        assert (run / name).exists(), name
    epochs = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(e["epoch"]) for e in epochs] == list(range(1, 9))
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])
    card = ModelCard.from_dict(json.loads((run / "card.json").read_text()))
    assert card.class_names == ("circle", "square", "stripes")
    assert card.channels == 3 and card.input_size == (32, 32) and card.resize == "stretch"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["arch"] == "simple_cnn" and ModelCard.from_dict(ckpt["card"]) == card

    onnx_path = tmp_path / "model.onnx"
    r = runner.invoke(app, ["export", str(run / "best.pt"), "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output

    test_dir, labels = shapes_test
    sub = tmp_path / "submission.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "--model", str(onnx_path), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    predicted = {row["id"]: row["label"] for row in csv.DictReader(sub.open())}
    truth = {row["id"]: row["label"] for row in csv.DictReader(labels.open())}
    assert predicted.keys() == truth.keys()
    submission_acc = sum(predicted[k] == truth[k] for k in truth) / len(truth)

    out = tmp_path / "eval"
    r = runner.invoke(
        app, ["evaluate", str(test_dir), "--labels", str(labels), "--model", str(onnx_path), "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    # evaluate and predict agree, and the model learned the shapes (chance is 1/3).
    assert metrics["accuracy"] == submission_acc
    assert metrics["accuracy"] > 0.8, metrics["accuracy"]
