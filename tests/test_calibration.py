"""Temperature scaling: the fitted T, what `cvtool calibrate` writes, and predict applying it."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
from helpers_predict import image_folder, linear_onnx
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import CardError, ModelCard
from cvtool.evaluation.calibration import fit_temperature
from cvtool.evaluation.metrics import log_loss
from cvtool.evaluation.oof import read_oof, write_oof
from cvtool.infer.predictor import Predictor
from cvtool.infer.session import open_model
from cvtool.onnxtools.card_edit import read_card
from cvtool.softmax import softmax

runner = CliRunner()
NAMES = ("a", "b", "c", "d")


def calibrated_data(rng, n: int, k: int = 4, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): z is calibrated by construction."""
    z = rng.normal(0, scale, (n, k)).astype(np.float32)
    cdf = np.cumsum(softmax(z).astype(np.float64), axis=1)
    labels = np.minimum((rng.random((n, 1)) * cdf[:, -1:] > cdf).sum(axis=1), k - 1)
    return z, labels


@pytest.mark.parametrize("t0", [2.5, 0.6])
def test_fitted_temperature_recovers_a_known_one(t0):
    z, y = calibrated_data(np.random.default_rng(0), 200_000)
    t = fit_temperature(z * t0, y)  # over-confident (t0 > 1) or under-confident logits
    assert t == pytest.approx(t0, rel=0.02)
    # Exactly t0 times the sample's own optimum for the calibrated logits (scale equivariance).
    assert t == pytest.approx(t0 * fit_temperature(z, y), rel=1e-5)
    assert log_loss(y, softmax(z * t0 / np.float32(t))) <= log_loss(y, softmax(z * t0))


def test_card_carries_the_temperature_and_old_readers_are_unaffected():
    plain = ModelCard(class_names=NAMES)
    assert "calibration" not in plain.to_dict() and plain.temperature == 1.0
    cal = ModelCard(class_names=NAMES, calibration={"method": "temperature", "temperature": 1.7})
    again = ModelCard.from_json(cal.to_json())
    assert again == cal and again.temperature == 1.7 and cal != plain
    hash(cal)  # cards are cache keys: the dict field must stay out of the hash
    for bad in ({"method": "temperature", "temperature": 0}, {"method": "platt", "temperature": 1.0}):
        with pytest.raises(CardError, match="calibration"):
            ModelCard(class_names=NAMES, calibration=bad)


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """A linear model, and labels drawn from softmax(logits / 3): the model is 3× too confident."""
    d = tmp_path_factory.mktemp("calibrate")
    model = linear_onnx(d / "m.onnx", NAMES, size=16, seed=3)
    ids = [str(i) for i in range(1, 601)]
    images = image_folder(d / "images", ids)
    files = [images / f"{i}.png" for i in ids]
    m = open_model(model, device="cpu")
    from cvtool.images import load_and_preprocess

    logits = m.outputs(np.stack([load_and_preprocess(f, m.card) for f in files]))
    rng = np.random.default_rng(1)
    p = softmax(logits / 3.0).astype(np.float64)
    labels = [NAMES[rng.choice(len(NAMES), p=row / row.sum())] for row in p]
    for part, rows in (("fit", range(0, 400)), ("held", range(400, 600))):
        with open(d / f"{part}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label"])
            w.writerows([ids[i], labels[i]] for i in rows)
    return d, model, images, logits, labels


def test_calibrate_writes_the_temperature_and_predict_applies_it(overconfident, tmp_path):
    d, model, images, logits, labels = overconfident
    out = tmp_path / "cal.onnx"
    args = ["calibrate", str(model), str(images), "--labels", str(d / "fit.csv"), "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cal = read_card(onnx.load(str(out))).calibration
    assert cal["method"] == "temperature" and cal["n"] == 400
    assert cal["temperature"] == pytest.approx(3.0, rel=0.25)  # 400 sampled labels: a loose bound
    assert cal["nll_after"] <= cal["nll_before"] and cal["ece_after"] <= cal["ece_before"]
    # The graph is unchanged; only the card differs.
    a, b = onnx.load(str(model)), onnx.load(str(out))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()

    # predict divides the logits by T (probabilities written with 6 decimals); --no-calibration not.
    t = np.float32(cal["temperature"])
    for extra, expected in (([], softmax(logits / t)), (["--no-calibration"], softmax(logits))):
        sub = tmp_path / "probs.csv"
        r = runner.invoke(app, ["predict", str(images), "-m", str(out), "-o", str(sub), "--probs", *extra])
        assert r.exit_code == 0, r.output
        assert ("calibrated probabilities" in r.output) == (not extra)
        rows = {row["id"]: [float(row[n]) for n in NAMES] for row in csv.DictReader(open(sub))}
        got = np.array([rows[str(i)] for i in range(1, 601)])
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # The Python API applies it too.
    api = Predictor(out, device="cpu").predict([images / "1.png"]).probs[0]
    np.testing.assert_allclose(api, softmax(logits[:1] / t)[0], atol=1e-6)


def test_calibrated_model_scores_a_lower_log_loss_on_held_out_data(overconfident, tmp_path):
    d, model, images, _, _ = overconfident
    out = tmp_path / "cal.onnx"
    assert runner.invoke(app, ["calibrate", str(model), str(images), "--labels", str(d / "fit.csv"),
                               "-o", str(out)]).exit_code == 0  # fmt: skip
    losses = {}
    for name, m in (("plain", model), ("calibrated", out)):
        ev = tmp_path / f"eval_{name}"
        r = runner.invoke(app, ["evaluate", str(images), "--labels", str(d / "held.csv"), "-m", str(m),
                                "-o", str(ev), "--no-report"])  # fmt: skip
        assert r.exit_code == 0, r.output
        metrics = json.loads((ev / "metrics.json").read_text())
        losses[name] = (metrics["log_loss"], metrics["accuracy"])
    assert losses["calibrated"][0] < losses["plain"][0]
    assert losses["calibrated"][1] == losses["plain"][1]  # the argmax cannot change
    # The calibrated model's report shows the reliability before and after its temperature: the
    # "before" figures are exactly the uncalibrated file's on the same images.
    metrics = json.loads((tmp_path / "eval_calibrated" / "metrics.json").read_text())
    assert metrics["uncalibrated"]["log_loss"] == pytest.approx(losses["plain"][0], rel=1e-5)
    assert (tmp_path / "eval_calibrated" / "reliability_uncalibrated.png").is_file()
    assert not (tmp_path / "eval_plain" / "reliability_uncalibrated.png").exists()
    ev = tmp_path / "eval_report"
    args = ["evaluate", str(images), "--labels", str(d / "held.csv"), "-m", str(out), "-o", str(ev)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Before calibration: log loss" in (ev / "report.html").read_text()


def test_calibrate_on_out_of_fold_predictions(tmp_path):
    z, y = calibrated_data(np.random.default_rng(2), 5_000)
    oof = tmp_path / "oof.csv"
    write_oof(oof, [f"{i}.png" for i in range(len(y))], y, [1 + i % 5 for i in range(len(y))], z * 2.0, NAMES)
    table = read_oof(oof, NAMES)
    np.testing.assert_allclose(table.logits, z * 2.0, rtol=1e-5)
    model = linear_onnx(tmp_path / "m.onnx", NAMES)
    out = tmp_path / "cal.onnx"
    r = runner.invoke(app, ["calibrate", str(model), "--oof", str(oof), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert read_card(onnx.load(str(out))).temperature == pytest.approx(2.0, rel=0.05)
    r = runner.invoke(app, ["calibrate", str(model), "-o", str(out)])
    assert r.exit_code == 2 and "--oof" in r.output


def test_train_calibrate_puts_the_temperature_into_the_exported_model(tmp_path):
    from conftest import make_image_folder

    from cvtool.evaluation.calibration import fit_temperature as fit
    from cvtool.train.checkpoint import load_checkpoint
    from cvtool.train.config import TrainConfig
    from cvtool.train.logits import checkpoint_logits
    from cvtool.train.loop import _split

    data = make_image_folder(tmp_path / "shapes", per_class=12, seed=3)
    run = tmp_path / "run"
    args = ["train", str(data), "--arch", "mlp", "--epochs", "2", "--batch-size", "8", "--workers", "0",
            "--val-split", "0.3", "--calibrate", "--out", str(run)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "calibrated on " in r.output
    card = load_checkpoint(run / "best.pt")["card"]
    cal = card["calibration"]
    assert json.loads((run / "card.json").read_text())["calibration"] == cal
    # The temperature is the one fitted on best.pt's logits on the validation split (T = 1 only
    # when the fit would have made the calibration error worse).
    import torch

    cfg = TrainConfig(**json.loads((run / "config.json").read_text()))
    _, _, val_paths, val_labels, _, _ = _split(cfg, lambda _: None)
    ok, logits = checkpoint_logits(run / "best.pt", val_paths, torch.device("cpu"))
    expected = fit(logits, np.array([val_labels[i] for i in ok]))
    assert cal["temperature"] in (pytest.approx(expected, rel=1e-5), 1.0)
    assert cal["nll_after"] <= cal["nll_before"] and cal["n"] == len(ok)
    onnx_path = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", str(run / "best.pt"), "-o", str(onnx_path)]).exit_code == 0
    assert read_card(onnx.load(str(onnx_path))).calibration == cal


def test_export_verify_passes_on_a_calibrated_checkpoint(tmp_path):
    # --verify compares the file's deployed probabilities (logits / T) with PyTorch's, both with T.
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "shapes", per_class=8, seed=2)
    run = tmp_path / "run"
    args = ["train", str(data), "--arch", "mlp", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--val-split", "0.3", "--calibrate", "--out", str(run)]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(run / "best.pt"), "-o", str(out), "--verify", str(data)])
    assert r.exit_code == 0, r.output
    assert "top-1 agreement 100.00%" in r.output
