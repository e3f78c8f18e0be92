"""INT8: static QDQ quantization agrees with float32, keeps the card, and runs without torch."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, make_image_folder
from helpers_export import trained_checkpoint
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.data import scan_image_folder
from cvtool.export.onnx_export import export_checkpoint
from cvtool.images import load_and_preprocess
from cvtool.infer.compare import compare_files, compare_predictions
from cvtool.infer.session import open_model
from cvtool.onnxtools.card_edit import read_card
from cvtool.onnxtools.params import count_parameters
from cvtool.onnxtools.quantize import QuantizeError, QuantSettings, calibration_files, quantize_model

runner = CliRunner()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, shapes_train):
    out = tmp_path_factory.mktemp("int8")
    ckpt = trained_checkpoint(out, shapes_train)
    export_checkpoint(ckpt, out / "fp32.onnx")
    return out / "fp32.onnx"


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """150 generated images the model has not seen, labeled by folder."""
    return make_image_folder(tmp_path_factory.mktemp("int8_eval") / "eval", per_class=50, seed=7)


@pytest.fixture(scope="module")
def int8(fp32, shapes_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8_out") / "model.int8.onnx"
    summary = quantize_model(fp32, out, calibration_files(shapes_train, 64))
    return out, summary


def stacked(root, card):
    s = scan_image_folder(root, classes=card.class_names)
    return np.stack([load_and_preprocess(p, card) for p in s.paths]), np.array(s.labels), s.paths


def test_int8_agrees_with_fp32_on_generated_images(fp32, int8, eval_set):
    path, summary = int8
    m32, m8 = open_model(fp32, device="cpu"), open_model(path, device="cpu")
    x, y, files = stacked(eval_set, m32.card)
    p32, p8 = m32.run(x), m8.run(x)
    agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
    acc32, acc8 = float(np.mean(p32.argmax(1) == y)), float(np.mean(p8.argmax(1) == y))
    assert acc32 >= 0.9  # the model has learned the shapes, so top-1 margins are real
    assert agreement >= 0.98
    assert acc8 >= acc32 - 0.02

    # compare_predictions (used by --verify) reports the same numbers as the direct loop above.
    comp = compare_predictions(files, m32.card, m32.run, m8.run, list(y))
    assert comp.n == len(files) and not comp.failed
    assert comp.agreement == pytest.approx(agreement)
    assert comp.max_abs_diff == pytest.approx(float(np.abs(p32 - p8).max()), rel=1e-6)
    assert (comp.accuracy_ref, comp.accuracy_cand) == (pytest.approx(acc32), pytest.approx(acc8))
    # compare_files (export --int8/--fp16 and quantize --verify) is the same comparison, file to file.
    assert compare_files(fp32, path, (list(files), list(y))) == comp
    assert summary.calibrated == 64 and not summary.failed


def test_int8_graph_is_quantized_and_keeps_the_card(fp32, int8):
    path, summary = int8
    q, f = onnx.load(str(path)), onnx.load(str(fp32))
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    conv_weights = [t for t in q.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.INT8 for t in conv_weights)
    assert count_parameters(q) == count_parameters(f)  # same weights, 8-bit
    assert summary.bytes_out < 0.35 * summary.bytes_in
    card32, card8 = read_card(f), read_card(q)
    assert card8 == card32  # extra (provenance) is not part of equality…
    assert card8.extra["precision"] == "int8"  # …but says what the file is
    assert card8.extra["quantization"] == QuantSettings().describe()
    assert [i.name for i in q.graph.input] == ["input"] and q.graph.output[0].name == "logits"
    # The default: unsigned activations (zero points of activation QuantizeLinear are uint8).
    inits = {t.name: t for t in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(t.data_type == onnx.TensorProto.UINT8 for t in zps)


@pytest.mark.parametrize(
    "settings,op",
    [
        (QuantSettings(format="qoperator"), "QLinearConv"),
        (QuantSettings(activations="int8", per_channel=False, reduce_range=False), "QuantizeLinear"),
    ],
)
def test_other_settings(fp32, shapes_train, eval_set, tmp_path, settings, op):
    out = tmp_path / "q.onnx"
    quantize_model(fp32, out, calibration_files(shapes_train, 32), settings=settings)
    q = onnx.load(str(out))
    assert op in {n.op_type for n in q.graph.node}
    m32, m8 = open_model(fp32, device="cpu"), open_model(out, device="cpu")
    x, _, _ = stacked(eval_set, m32.card)
    assert np.mean(m32.run(x).argmax(1) == m8.run(x).argmax(1)) >= 0.95


def test_quantize_cli_verifies_and_measures(fp32, shapes_train, eval_set, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(fp32.read_bytes())
    r = runner.invoke(
        app,
        ["quantize", str(src), "--calib", str(shapes_train), "--calib-n", "32", "--verify", str(eval_set)]
        + ["--bench-batch", "8", "--threads", "1"],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "model.int8.onnx"  # the default name
    assert read_card(onnx.load(str(out))).extra["precision"] == "int8"
    assert "calibrated on 32 images" in r.output
    assert "INT8 vs float32 on 150 images: top-1 agreement" in r.output
    assert "top-1 accuracy float32" in r.output
    assert "speed (CPU, batch 8, 1 threads): float32" in r.output and "×)" in r.output


def test_export_int8_in_one_go(fp32, shapes_train, eval_set, tmp_path):
    ckpt = fp32.with_name("simple_cnn_trained.pt")
    out = tmp_path / "m.int8.onnx"
    r = runner.invoke(
        app,
        ["export", str(ckpt), "-o", str(out), "--int8", "--calib", str(shapes_train), "--calib-n", "32"]
        + ["--verify", str(eval_set)],
    )
    assert r.exit_code == 0, r.output
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "verify (PyTorch vs ONNX float32) on 150 images: top-1 agreement 100.00%" in r.output
    assert "INT8 vs float32 on 150 images" in r.output
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--int8"])
    assert r.exit_code == 2 and "--calib" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(
        app, ["export", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--int8", "--calib", str(empty)]
    )
    assert r.exit_code == 2 and "no image files found for calibration" in r.output
    assert not (tmp_path / "x.onnx").exists()


def test_fixed_batch_model_without_card(shapes_train, eval_set, tmp_path):
    """Another tool's export (fixed batch 2, input "x.1", no card): flags supply the card, the
    odd last calibration batch is filled up, and the result carries the card."""
    from cvtool.train.models import create_model

    torch.manual_seed(0)
    net = create_model("simple_cnn", 3, 3, (32, 32)).eval()
    src = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, 32, 32),), str(src), dynamo=False, input_names=["x.1"])
    out = tmp_path / "foreign.int8.onnx"
    flags = ["--classes", ",".join(CLASSES), "--mean", "0.2,0.2,0.2", "--std", "0.3,0.3,0.3"]
    r = runner.invoke(
        app, ["quantize", str(src), "--calib", str(shapes_train), "--calib-n", "5", "--no-bench", *flags]
    )
    assert r.exit_code == 0, r.output
    assert "calibrated on 5 images" in r.output
    m8 = open_model(out, device="cpu")
    assert (m8.has_card, m8.input_name, m8.fixed_batch, m8.card.class_names) == (True, "x.1", 2, CLASSES)
    x, _, _ = stacked(eval_set, m8.card)
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x[:7])), 1).numpy()
    assert np.abs(m8.run(x[:7]) - ref).max() < 0.1  # 7 images through a batch-2 model: padded


def test_refusals_and_unreadable_images(fp32, int8, shapes_train, tmp_path):
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(int8[0], tmp_path / "again.onnx", calibration_files(shapes_train, 4))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["quantize", str(fp32), "--calib", str(empty), "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "no image files" in r.output and str(empty) in r.output
    r = runner.invoke(app, ["quantize", str(fp32), "--calib", str(shapes_train), "-o", str(fp32)])
    assert r.exit_code == 2 and "must differ" in r.output
    r = runner.invoke(
        app,
        [
            "quantize",
            str(fp32),
            "--calib",
            str(shapes_train),
            "-o",
            str(tmp_path / "y.onnx"),
            "--verify",
            str(empty),
        ],
    )
    assert r.exit_code == 2 and "no image files" in r.output
    assert not (tmp_path / "y.onnx").exists()  # checked before calibrating

    calib = tmp_path / "calib"
    make_image_folder(calib, per_class=2)
    (calib / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(fp32), "--calib", str(calib), "-o", str(out), "--no-bench"])
    assert r.exit_code == 1, r.output
    assert "broken.png" in r.output and "calibrated on 6 images" in r.output
    assert out.exists()
