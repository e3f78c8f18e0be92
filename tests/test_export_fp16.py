"""--fp16: float16 weights inside, float32 in and out, close to float32; topological order."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.infer.session import open_model
from cvtool.onnxtools.card_edit import read_card
from cvtool.onnxtools.fp16 import to_fp16, topological_sort

runner = CliRunner()


def test_export_fp16(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    out = tmp_path / "m16.onnx"
    args = ["export", str(rgb_model.with_suffix(".pt")), "-o", str(out), "--fp16"]
    r = runner.invoke(app, [*args, "--verify", str(test_dir), "--labels", str(labels)])
    assert r.exit_code == 0, r.output
    assert "(float16," in r.output and "float16 vs float32 on" in r.output

    m16, m32 = onnx.load(str(out)), onnx.load(str(rgb_model))
    io = [v.type.tensor_type.elem_type for v in (*m16.graph.input, *m16.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]  # callers feed and read float32 as before
    weights = [t for t in m16.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert out.stat().st_size < 0.6 * rgb_model.stat().st_size
    card = read_card(m16)
    assert card == read_card(m32) and card.extra["precision"] == "fp16"

    # Runs on the CPU too, and agrees with float32 to float16 precision.
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    p16 = open_model(out, device="cpu").run(x)
    p32 = open_model(rgb_model, device="cpu").run(x)
    np.testing.assert_allclose(p16, p32, atol=5e-3)
    assert np.abs(p16 - p32).max() > 0  # it really is a different (half-precision) graph


def test_fp16_and_int8_exclude_each_other(rgb_model, tmp_path):
    args = ["export", str(rgb_model.with_suffix(".pt")), "-o", str(tmp_path / "m.onnx"), "--fp16", "--int8"]
    r = runner.invoke(app, [*args, "--calib", str(tmp_path)])
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_topological_sort_restores_a_shuffled_graph(rgb_model):
    m = onnx.load(str(rgb_model))
    original = [n.name for n in m.graph.node]
    topological_sort(m.graph)
    assert [n.name for n in m.graph.node] == original  # already sorted: left as it is

    nodes = list(m.graph.node)
    random.Random(0).shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    assert [n.name for n in m.graph.node] != original
    topological_sort(m.graph)
    onnx.checker.check_model(m, full_check=True)  # raises on any out-of-order node
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(rgb_model)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)


def test_to_fp16_leaves_its_input_alone(rgb_model):
    m = onnx.load(str(rgb_model))
    before = m.SerializeToString()
    half = to_fp16(m)
    assert m.SerializeToString() == before
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
