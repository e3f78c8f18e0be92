"""`cvtool summary`: parameter totals equal sum(p.numel()); the ONNX branch needs no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import onnx
import pytest
import torch
from conftest import CLASSES, export_random_model, make_image_folder
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import ModelCard
from cvtool.onnxtools.inspect import inspect_model
from cvtool.onnxtools.model_file import OnnxFileError
from cvtool.onnxtools.quantize import calibration_files, quantize_model
from cvtool.onnxtools.summary import onnx_summary
from cvtool.train.checkpoint import save_checkpoint
from cvtool.train.models import create_model
from cvtool.train.summary import checkpoint_summary, module_summary

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("summary")
    return {arch: export_random_model(out, channels=3, arch=arch) for arch in ("mlp", "simple_cnn")}


@pytest.mark.parametrize("arch,shape", [("simple_cnn", (1, 28, 28)), ("resnet18", (3, 32, 32)),
                                        ("vgg_small", (3, 32, 32))])  # fmt: skip
def test_module_totals_equal_the_parameter_count(arch, shape):
    net = create_model(arch, 10, shape[0], shape[1:])
    s = module_summary(net, shape)
    assert s.total == sum(p.numel() for p in net.parameters())
    assert sum(r.params for r in s.rows) == s.total  # every parameter in exactly one row
    assert s.trainable == s.total and s.non_trainable == 0
    assert s.rows[-1].output_shape == ("batch", 10)
    assert all(r.output_shape is not None for r in s.rows)


def test_checkpoint_summary_counts_frozen_parameters_as_non_trainable(tmp_path):
    net = create_model("simple_cnn", len(CLASSES), 3, (32, 32))
    frozen = [n for n, _ in net.named_parameters() if n.startswith("features.")]
    card = ModelCard(class_names=CLASSES, channels=3, input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    path = save_checkpoint(tmp_path / "c.pt", {"arch": "simple_cnn", "card": card.to_dict(),
                                               "model": net.state_dict(), "frozen": frozen})  # fmt: skip
    s = checkpoint_summary(path)
    n_frozen = sum(p.numel() for n, p in net.named_parameters() if n in frozen)
    assert s.total == sum(p.numel() for p in net.parameters())
    assert (s.trainable, s.non_trainable) == (s.total - n_frozen, n_frozen)
    rows = {r.name: r for r in s.rows}
    assert rows["features.0"].trainable is False and rows["classifier.4"].trainable is True
    assert rows["features.2"].trainable is None  # ReLU: no parameters
    r = runner.invoke(app, ["summary", str(path)])
    assert r.exit_code == 0, r.output
    assert f"total params: {s.total:,}" in r.output and f"non-trainable params: {n_frozen:,}" in r.output


def test_onnx_totals(exported):
    # No batch-norm in an MLP: the graph holds exactly the PyTorch parameters.
    mlp = create_model("mlp", len(CLASSES), 3, (32, 32))
    s = onnx_summary(exported["mlp"])
    assert s.total == sum(p.numel() for p in mlp.parameters())
    assert s.trainable is None and s.input_shape == ("batch", 3, 32, 32)
    assert s.rows[-1].output_shape == ("batch", len(CLASSES))
    # With batch-norm the graph may differ from PyTorch (folding): the total is the graph's own
    # float initializers, counted independently here.
    proto = onnx.load(str(exported["simple_cnn"]))
    floats = sum(math.prod(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    s = onnx_summary(exported["simple_cnn"])
    assert s.total == floats == sum(r.params for r in s.rows)
    convs = [r for r in s.rows if r.kind == "Conv"]
    assert [r.output_shape for r in convs] == [
        ("batch", 32, 32, 32),
        ("batch", 64, 16, 16),
        ("batch", 128, 8, 8),
    ]


BLOCKER = """
import sys
for name in ("torch", "torchvision", "onnxscript"):
    sys.modules[name] = None  # `import torch` now raises ImportError
from cvtool.cli import app
try:
    app({args!r})
except SystemExit as e:
    sys.exit(e.code or 0)
"""


def test_onnx_summary_without_torch(exported):
    expected = onnx_summary(exported["simple_cnn"]).total
    code = BLOCKER.format(args=["summary", str(exported["simple_cnn"])])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"total params: {expected:,}" in r.stdout and "(batch, 3)" in r.stdout


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OnnxFileError, match="bad.onnx: not a readable ONNX model"):
        onnx_summary(bad)
    r = runner.invoke(app, ["summary", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "missing.pt: file not found" in r.output
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    r = runner.invoke(app, ["summary", str(tmp_path / "foreign.pt")])
    assert r.exit_code == 2 and "not a cvtool checkpoint" in r.output


def test_summary_and_inspect_count_an_int8_file_alike(exported, tmp_path):
    # One rule for both: quantized weights and the int32 biases quantized ops read are parameters,
    # scales and zero points are not, so the INT8 file counts what its float32 source counts.
    calib = make_image_folder(tmp_path / "calib", per_class=4)
    q = tmp_path / "q.onnx"
    quantize_model(exported["simple_cnn"], q, calibration_files(calib, 12))
    float_total = inspect_model(exported["simple_cnn"]).parameters
    s = onnx_summary(q)
    assert s.total == inspect_model(q).parameters == float_total
    assert sum(r.params for r in s.rows) == s.total
    r = runner.invoke(app, ["summary", str(q)])
    assert r.exit_code == 0, r.output
    assert f"total params: {float_total:,}" in r.output
