"""`cvtool inspect`: shapes, opsets, card, parameter count, size and operator histogram."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES
from helpers_export import save_checkpoint_for, shapes_card
from onnx import TensorProto, helper
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.export.onnx_export import export_checkpoint
from cvtool.onnxtools.inspect import inspect_model, op_histogram
from cvtool.onnxtools.params import count_parameters

runner = CliRunner()


def reference_parameter_count(net: torch.nn.Module) -> int:
    """Parameters of `net` as an inference graph stores them: each BatchNorm folded into the
    convolution before it (weights kept, a bias of out_channels added where there was none)."""
    n = sum(p.numel() for p in net.parameters())
    modules = list(net.modules())
    for prev, m in zip(modules, modules[1:], strict=False):
        if isinstance(m, torch.nn.BatchNorm2d):
            assert isinstance(prev, torch.nn.Conv2d) and prev.bias is None
            n -= 2 * m.num_features  # BN weight and bias disappear…
            n += m.num_features  # …into a new conv bias
    return n


@pytest.mark.parametrize("arch", ["mlp", "simple_cnn"])
def test_parameter_count_matches_the_pytorch_model(tmp_path, arch):
    from cvtool.train.models import create_model

    torch.manual_seed(0)
    net = create_model(arch, len(CLASSES), 3, (32, 32)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            # As after training. (Freshly initialised, BatchNorm folds into an all-zero bias,
            # which the exporter rightly leaves out of the file.)
            m.running_mean.uniform_(-0.5, 0.5)
            m.bias.data.uniform_(-0.5, 0.5)
    ckpt = save_checkpoint_for(tmp_path / "m.pt", net, arch, shapes_card())
    export_checkpoint(ckpt, tmp_path / "m.onnx")
    info = inspect_model(tmp_path / "m.onnx")
    want = reference_parameter_count(net)
    if arch == "mlp":
        assert want == sum(p.numel() for p in net.parameters())
    assert info.parameters == want
    assert info.parameter_dtypes == {"float": want}
    assert info.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert info.card == shapes_card()
    assert [(t.name, t.dtype, t.shape[1:]) for t in info.inputs] == [("input", "float", [3, 32, 32])]
    assert isinstance(info.inputs[0].shape[0], str)  # dynamic batch: a symbolic name
    assert [(t.name, t.shape[1:]) for t in info.outputs] == [("logits", [len(CLASSES)])]
    assert info.opsets[""] == 18


def hand_built_model() -> onnx.ModelProto:
    """A graph whose contents are known by construction: weights, scales, shape constants,
    a Constant node, an If with a subgraph, and a com.microsoft node."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12))
    b = helper.make_tensor("b", TensorProto.FLOAT16, [4], np.ones(4))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])  # not a parameter
    q = helper.make_tensor("q", TensorProto.INT8, [5], np.ones(5))  # quantized weight
    q_scale = helper.make_tensor("q_scale", TensorProto.FLOAT, [], [0.1])  # not a parameter
    q_zp = helper.make_tensor("q_zp", TensorProto.INT8, [], [0])  # not a parameter
    then = helper.make_graph(
        [helper.make_node("Relu", ["y"], ["t"])], "then", [], [helper.make_tensor_value_info("t", 1, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Sigmoid", ["y"], ["e"])], "else", [], [helper.make_tensor_value_info("e", 1, None)]
    )
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b32"], ["y"], transB=1),
        helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT),
        helper.make_node(
            "Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [2, 3], np.ones(6))
        ),
        helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zp"], ["dq"]),
        helper.make_node("ReduceSum", ["y"], ["cond_f"], keepdims=0),
        helper.make_node("Cast", ["cond_f"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other),
        helper.make_node("Reshape", ["z", "shape"], ["out"]),
        helper.make_node("FusedGemm", ["x", "w"], ["unused"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        initializer=[w, b, shape, q, q_scale, q_zp],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def test_hand_built_graph_counts(tmp_path):
    m = hand_built_model()
    assert count_parameters(m) == 12 + 4 + 6 + 5  # w, b, the Constant, q
    assert op_histogram(m) == {
        "Gemm": 1,
        "Cast": 2,
        "Constant": 1,
        "DequantizeLinear": 1,
        "ReduceSum": 1,
        "If": 1,
        "Relu": 1,
        "Sigmoid": 1,
        "Reshape": 1,
        "com.microsoft.FusedGemm": 1,
    }
    f = tmp_path / "hand.onnx"
    onnx.save(m, str(f))
    info = inspect_model(f)
    assert info.parameter_dtypes == {"float": 18, "float16": 4, "int8": 5}
    assert info.nodes == 11
    assert info.opsets == {"": 17, "com.microsoft": 1}
    assert info.card is None and info.card_error is None
    assert [(t.name, t.shape) for t in info.inputs] == [("x", ["n", 3])]


def test_cli_text_and_json(rgb_model, tmp_path):
    r = runner.invoke(app, ["inspect", str(rgb_model), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    info = inspect_model(rgb_model)
    assert d["parameters"] == info.parameters > 0
    assert d["card"]["class_names"] == list(CLASSES)
    assert d["ops"] == info.ops and sum(d["ops"].values()) == d["nodes"]

    r = runner.invoke(app, ["inspect", str(rgb_model)])
    assert r.exit_code == 0, r.output
    assert f"parameters: {info.parameters:,}" in r.output
    assert "opsets: ai.onnx 18" in r.output and "(batch, 3, 32, 32)" in r.output
    assert "classes (3): circle, square, stripes" in r.output
    for op, n in info.ops.items():
        assert any(line.split() == [op, str(n)] for line in r.output.splitlines())

    f = tmp_path / "hand.onnx"
    onnx.save(hand_built_model(), str(f))
    r = runner.invoke(app, ["inspect", str(f)])
    assert r.exit_code == 0, r.output
    assert "card: no card" in r.output


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = runner.invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2 and "bad.onnx" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "not found" in r.output
