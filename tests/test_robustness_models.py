"""Unusual or broken model files: each gets a one-line actionable error, or is handled."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import CARD_METADATA_KEY, ModelCard
from cvtool.images import load_and_preprocess
from cvtool.infer.session import ModelError, open_model

runner = CliRunner()


def linear_model(path, input_shape, k=3, inputs=1, card_json=None, seed=0):
    """Flatten → MatMul: a tiny classifier whose input layout is whatever we declare."""
    rng = np.random.default_rng(seed)
    n_features = int(np.prod(input_shape[1:]))
    w = numpy_helper.from_array(rng.normal(size=(n_features, k)).astype(np.float32), "W")
    names = [f"x{i}" for i in range(inputs)]
    nodes, src = [], names[0]
    if inputs == 2:
        nodes.append(helper.make_node("Add", names, ["sum"]))
        src = "sum"
    nodes += [helper.make_node("Flatten", [src], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, input_shape) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [input_shape[0], k])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card_json is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = CARD_METADATA_KEY, card_json
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def image_dir(tmp_path, n=5):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def predict(tmp_path, model, *extra):
    out = tmp_path / "sub.csv"
    r = runner.invoke(
        app, ["predict", str(image_dir(tmp_path)), "--model", str(model), "-o", str(out), *extra]
    )
    return r, out


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    r, out = predict(tmp_path, bad)
    assert r.exit_code == 2 and "weights.onnx: not a loadable ONNX model" in r.output
    assert not out.exists()


def test_nhwc_input_is_explained(tmp_path):
    m = linear_model(tmp_path / "nhwc.onnx", ["N", 8, 8, 3])
    with pytest.raises(ModelError, match="nhwc.onnx.*channels-last"):
        open_model(m, device="cpu")


def test_four_channel_input(tmp_path):
    m = linear_model(tmp_path / "rgba.onnx", ["N", 4, 8, 8])
    r, _ = predict(tmp_path, m)
    assert r.exit_code == 2 and "rgba.onnx: input takes 4 channels" in r.output


def test_two_inputs(tmp_path):
    m = linear_model(tmp_path / "two.onnx", ["N", 3, 8, 8], inputs=2)
    r, _ = predict(tmp_path, m)
    assert r.exit_code == 2 and "two.onnx: the model has 2 inputs" in r.output


def test_malformed_card_json(tmp_path):
    m = linear_model(tmp_path / "bad_card.onnx", ["N", 3, 8, 8], card_json="{not json")
    r, _ = predict(tmp_path, m)
    assert r.exit_code == 2 and "bad_card.onnx: card is not valid JSON" in r.output


def test_card_class_count_differs_from_output(tmp_path):
    card = ModelCard(class_names=("a", "b"), input_size=(8, 8))
    m = linear_model(tmp_path / "mismatch.onnx", ["N", 3, 8, 8], k=3, card_json=card.to_json())
    r, _ = predict(tmp_path, m)
    assert r.exit_code == 2 and "mismatch.onnx: the card names 2 classes but the model outputs 3" in r.output


def test_card_missing_uses_graph_and_defaults_with_a_warning(tmp_path):
    m = linear_model(tmp_path / "bare.onnx", ["N", 3, 8, 8], k=3)
    r, out = predict(tmp_path, m)
    assert r.exit_code == 0, r.output
    assert "carries no cvtool card" in r.output
    labels = {row[1] for row in list(csv.reader(out.open()))[1:]}
    assert labels <= {"0", "1", "2"}  # index names, since the file has none


def test_fixed_batch_of_one_predicts_every_image(tmp_path):
    card = ModelCard(class_names=("a", "b", "c"), input_size=(8, 8))
    m = linear_model(tmp_path / "fixed1.onnx", [1, 3, 8, 8], k=3, card_json=card.to_json())
    r, out = predict(tmp_path, m, "--batch-size", "4")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(out.open()))[1:]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    model = open_model(m, device="cpu")
    assert model.fixed_batch == 1
    files = sorted((tmp_path / "imgs").glob("*.png"), key=lambda p: int(p.stem))
    x = np.stack([load_and_preprocess(f, card) for f in files])
    expected = [card.class_names[k] for k in model.run(x).argmax(1)]  # run() pads/splits
    assert [row[1] for row in rows] == expected


# --- the card against a fixed graph input -------------------------------------------------------

FIXED_CARD = ModelCard(class_names=("a", "b", "c"), input_size=(28, 28))


def fixed28(tmp_path, card=FIXED_CARD):
    return linear_model(tmp_path / "fixed28.onnx", ["N", 3, 28, 28], k=3, card_json=card.to_json())


def assert_one_line_error(r, message):
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and "onnxruntime" not in r.output.lower()
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_predict_size_disagreeing_with_fixed_input_is_one_clear_error(tmp_path):
    m = fixed28(tmp_path)
    r, out = predict(tmp_path, m, "--size", "32")
    assert_one_line_error(r, f"{m}: the card's input size 32×32 does not match the model's fixed input 28×28")
    assert not out.exists()


def test_evaluate_size_disagreeing_with_fixed_input_is_one_clear_error(tmp_path):
    m = fixed28(tmp_path)
    images = image_dir(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},a\n" for i in range(1, 6)))
    r = runner.invoke(
        app,
        ["evaluate", str(images), "--labels", str(labels), "--model", str(m), "-o", str(tmp_path / "ev"),
         "--size", "32"],
    )  # fmt: skip
    assert_one_line_error(r, f"{m}: the card's input size 32×32 does not match the model's fixed input 28×28")


def test_card_set_size_disagreeing_with_fixed_input_is_refused(tmp_path):
    m = fixed28(tmp_path)
    before = m.read_bytes()
    r = runner.invoke(app, ["card", "set", str(m), "--size", "32"])
    assert_one_line_error(r, f"{m}: the card's input size 32×32 does not match the model's fixed input 28×28")
    assert m.read_bytes() == before
    # The matching size is accepted.
    r = runner.invoke(app, ["card", "set", str(m), "--size", "28", "--classes", "x,y,z"])
    assert r.exit_code == 0, r.output


def test_file_card_disagreeing_with_fixed_input_is_refused_at_open(tmp_path):
    bad = ModelCard(class_names=("a", "b", "c"), input_size=(32, 24))
    m = fixed28(tmp_path, bad)
    with pytest.raises(
        ModelError,
        match=r"fixed28\.onnx: the card's input size 32×24 does not match the model's fixed input 28×28$",
    ):
        open_model(m, device="cpu")
    # Fixed height only: the height is checked, the dynamic width is not.
    h_only = with_dynamic_dims(
        linear_model(tmp_path / "h_only.onnx", ["N", 3, 28, 28], k=3, card_json=bad.to_json()), {3: "w"}
    )
    with pytest.raises(ModelError, match="h_only.onnx: .* does not match the model's fixed input height 28$"):
        open_model(h_only, device="cpu")


def with_dynamic_dims(path, dims):
    """Rewrite the declared input shape: axis → symbolic name (the graph itself is unchanged)."""
    proto = onnx.load(str(path))
    for axis, name in dims.items():
        proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(proto, str(path))
    return path


def test_dynamic_input_size_is_not_checked(tmp_path):
    card = ModelCard(class_names=("a", "b", "c"), input_size=(32, 32))
    m = linear_model(tmp_path / "dyn.onnx", ["N", 3, 28, 28], k=3, card_json=card.to_json())
    m = with_dynamic_dims(m, {2: "h", 3: "w"})
    assert open_model(m, device="cpu").card.input_size == (32, 32)
    assert open_model(m, device="cpu", overrides={"input_size": (40, 20)}).card.input_size == (40, 20)
