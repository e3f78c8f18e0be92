"""Models from elsewhere: a foreign fixed-batch ONNX without a card predicts correctly after
`cvtool card set`, and with the same values given as predict/evaluate flags."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
from conftest import CLASSES, make_flat_test
from helpers_export import IMAGENET_MEAN, IMAGENET_STD, foreign_resnet18, torch_probs
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import CARD_METADATA_KEY, ModelCard
from cvtool.images import load_and_preprocess
from cvtool.infer.session import open_model
from cvtool.onnxtools.card_edit import read_card, set_card
from cvtool.onnxtools.model_file import OnnxFileError

runner = CliRunner()
MEAN = ",".join(map(str, IMAGENET_MEAN))
STD = ",".join(map(str, IMAGENET_STD))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, shapes_train):
    return foreign_resnet18(tmp_path_factory.mktemp("foreign"), shapes_train)


@pytest.fixture(scope="module")
def flat_test(tmp_path_factory):
    return make_flat_test(tmp_path_factory.mktemp("flat") / "test", per_class=6, seed=3)


def expected_labels(net, card, test_dir) -> dict[str, str]:
    """PyTorch's top-1 on the same files through the shared preprocessing: id → class name."""
    files = sorted(test_dir.glob("*.png"))
    x = np.stack([load_and_preprocess(f, card) for f in files])
    top = torch_probs(net, x).argmax(1)
    return {f.stem: CLASSES[i] for f, i in zip(files, top, strict=True)}


def read_submission(path) -> dict[str, str]:
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["id", "label"]
    return dict(rows[1:])


def test_the_foreign_model_is_what_the_issue_describes(foreign):
    path, _, _ = foreign
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["pixel_values"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert CARD_METADATA_KEY not in {p.key for p in m.metadata_props}


def test_predict_with_flags_matches_pytorch(foreign, flat_test, tmp_path):
    path, net, card = foreign
    test_dir, _ = flat_test
    want = expected_labels(net, card, test_dir)
    assert len(set(want.values())) > 1  # the labels tell images apart, so the check below can fail
    sub = tmp_path / "sub.csv"
    args = ["predict", str(test_dir), "--model", str(path), "-o", str(sub), "--batch-size", "4"]
    r = runner.invoke(app, [*args, "--classes", ",".join(CLASSES), "--mean", MEAN, "--std", STD])
    assert r.exit_code == 0, r.output
    assert read_submission(sub) == want


def test_card_set_then_predict_without_flags(foreign, flat_test, tmp_path):
    path, net, card = foreign
    test_dir, labels = flat_test
    out = tmp_path / "with_card.onnx"
    r = runner.invoke(
        app,
        [
            "card",
            "set",
            str(path),
            "--classes",
            ",".join(CLASSES),
            "--mean",
            MEAN,
            "--std",
            STD,
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert read_card(onnx.load(str(path))) is None  # -o leaves the original alone
    written = read_card(onnx.load(str(out)))
    # Size comes from the graph's fixed input; everything else from the flags or defaults.
    assert written == card

    m = open_model(out, device="cpu")
    assert (m.has_card, m.input_name, m.fixed_batch) == (True, "pixel_values", 1)
    sub = tmp_path / "sub.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "--model", str(out), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    assert "no cvtool card" not in r.output
    assert read_submission(sub) == expected_labels(net, card, test_dir)

    # evaluate from the file alone agrees with PyTorch's accuracy on the same labels.
    ev = tmp_path / "eval"
    r = runner.invoke(
        app, ["evaluate", str(test_dir), "--labels", str(labels), "--model", str(out), "-o", str(ev)]
    )
    assert r.exit_code == 0, r.output
    truth = dict(list(csv.reader(labels.open()))[1:])
    want = expected_labels(net, card, test_dir)
    acc = np.mean([want[k] == truth[k] for k in truth])
    assert json.loads((ev / "metrics.json").read_text())["accuracy"] == pytest.approx(acc)


def test_card_set_merges_over_an_existing_card_in_place(foreign, tmp_path):
    path, _, card = foreign
    f = tmp_path / "m.onnx"
    f.write_bytes(path.read_bytes())
    set_card(f, {"class_names": list(CLASSES), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    new, previous = set_card(f, {"class_names": ["x", "y", "z"], "interpolation": "bicubic"})
    assert previous == card
    assert new == ModelCard(
        class_names=("x", "y", "z"),
        input_size=(64, 64),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bicubic",
    )
    assert read_card(onnx.load(str(f))) == new
    # Only the metadata changed: the graph is byte-for-byte the same.
    assert onnx.load(str(f)).graph == onnx.load(str(path)).graph


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--classes", "a,b"], "names 2 classes but the model outputs 3"),
        (
            ["--classes", "a,b,c", "--size", "32"],
            "the card's input size 32×32 does not match the model's fixed input 64×64",
        ),
        (["--classes", "a,b,c", "--channels", "1"], "card says 1 input channels but the model takes 3"),
        (["--classes", "a,b,c", "--mean", "0.5"], "mean has 1 values but the model has 3 channels"),
    ],
)
def test_card_set_refuses_a_card_that_does_not_fit_the_graph(foreign, tmp_path, flags, message):
    path, _, _ = foreign
    f = tmp_path / "m.onnx"
    f.write_bytes(path.read_bytes())
    before = f.read_bytes()
    r = runner.invoke(app, ["card", "set", str(f), *flags])
    assert r.exit_code == 2
    assert message in r.output and str(f) in r.output
    assert f.read_bytes() == before


def test_card_set_replaces_a_malformed_card(foreign, tmp_path):
    path, _, _ = foreign
    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, "{not json"
    f = tmp_path / "broken.onnx"
    onnx.save(m, str(f))
    with pytest.raises(ValueError, match="not valid JSON"):
        read_card(onnx.load(str(f)))
    card, previous = set_card(f, {"class_names": ["a", "b", "c"]})
    assert previous is None and read_card(onnx.load(str(f))) == card


def test_card_set_needs_values_and_a_model(tmp_path, foreign):
    r = runner.invoke(app, ["card", "set", str(foreign[0])])
    assert r.exit_code == 2 and "nothing to set" in r.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = runner.invoke(app, ["card", "set", str(bad), "--classes", "a"])
    assert r.exit_code == 2 and "bad.onnx" in r.output and "not a readable ONNX model" in r.output
    with pytest.raises(OnnxFileError, match="not found"):
        set_card(tmp_path / "missing.onnx", {"class_names": ["a"]})


def test_card_show(foreign, rgb_model, tmp_path):
    r = runner.invoke(app, ["card", "show", str(rgb_model)])
    assert r.exit_code == 0, r.output
    assert ModelCard.from_dict(json.loads(r.stdout)) == open_model(rgb_model, device="cpu").card
    r = runner.invoke(app, ["card", "show", str(foreign[0])])
    assert r.exit_code == 1 and "no cvtool card" in r.output


def test_card_set_no_jpeg_draft_is_stored_and_read_back(tmp_path):
    # --no-jpeg-draft: exact parity with a full decode (torchvision), stored in the card.
    from helpers_predict import linear_onnx

    m = linear_onnx(tmp_path / "m.onnx", ("a", "b"))
    r = runner.invoke(app, ["card", "set", str(m), "--no-jpeg-draft"])
    assert r.exit_code == 0, r.output
    assert read_card(onnx.load(str(m))).jpeg_draft is False
    assert open_model(m, device="cpu").card.jpeg_draft is False
    r = runner.invoke(app, ["card", "set", str(m), "--jpeg-draft"])
    assert r.exit_code == 0 and read_card(onnx.load(str(m))).jpeg_draft is True
