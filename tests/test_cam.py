"""cvtool cam: the split point, the method (classic CAM for a GAP + linear head, a model that looks
at one corner), every registered arch, float16, INT8, a foreign model, and the command."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, export_random_model, make_image_folder
from helpers_cam import CORNER_CLASSES, bright_image, corner_model
from helpers_evaluate import linear_model
from helpers_export import foreign_resnet18
from onnx import numpy_helper
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.cam import normalize_map, open_cam, upsample_bilinear
from cvtool.evaluation.occlusion import load_input
from cvtool.infer.session import open_model
from cvtool.onnxtools.card_edit import write_card
from cvtool.onnxtools.split import SplitError
from cvtool.softmax import softmax
from cvtool.train.models import arch_names

runner = CliRunner()

# Where the automatic split lands at 32×32 (3 channels): (module the tensor belongs to, h×w).
SPLITS = {
    "alexnet": ("features.12", (3, 3)),
    "cnn4": ("features.13", (8, 8)),
    "resnet18": ("layer4.1", (4, 4)),
    "resnet34": ("layer4.2", (4, 4)),
    "simple_cnn": ("features.11", (4, 4)),
    "vgg16": ("features.29", (2, 2)),
    "vgg_small": ("features.22", (4, 4)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch → its exported random model (32×32, 3 channels), each exported once."""
    folder = tmp_path_factory.mktemp("cam_archs")
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = export_random_model(folder, channels=3, size=32, arch=arch)
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cam_images") / "data", per_class=2, seed=3)


def _inits(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_upsampling_is_torch_bilinear_without_corner_alignment():
    rng = np.random.default_rng(0)
    for (h, w), size in [((7, 7), (224, 224)), ((4, 4), (32, 32)), ((3, 3), (28, 28)), ((2, 5), (9, 13))]:
        m = rng.random((h, w))
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(upsample_bilinear(m, size), ref, atol=1e-12)


def test_normalisation_is_min_max_and_a_flat_map_is_zero():
    n = normalize_map(np.array([[2.0, 4.0], [3.0, 6.0]]))
    np.testing.assert_allclose(n, [[0, 0.5], [0.25, 1]])
    assert not normalize_map(np.full((3, 3), 0.7)).any()


def test_gap_linear_head_gives_classic_cam_over_cells_plus_bias(exported, images):
    path = exported("resnet18")
    m = open_model(path, device="cpu")
    split = open_cam(m)
    assert split.point.tensor == "relu_16" and split.point.op == "Relu"
    _, x = load_input(next(images.glob("circle/*.png")), m.card)
    logits, f = split.features(x)
    c, h, w = f.shape
    assert (c, h, w) == (512, 4, 4)
    # The backbone pass is the model's own forward pass.
    np.testing.assert_allclose(softmax(logits[None])[0], m.run(x[None])[0], atol=1e-6)
    # ... and its feature map is PyTorch's layer4 output for the same input.
    ckpt = torch.load(path.with_suffix(".pt"), weights_only=True)
    from cvtool.train.models import create_model

    net = create_model("resnet18", len(CLASSES), 3, (32, 32)).eval()
    net.load_state_dict(ckpt["model"])
    seen = {}
    net.layer4.register_forward_hook(lambda mod, i, o: seen.update(f=o))
    with torch.no_grad():
        net(torch.from_numpy(x[None]))
    np.testing.assert_allclose(f, seen["f"][0].numpy(), atol=1e-4)

    # Classic CAM from the file's own Gemm weights: Σ_k w_ck f_k(i, j) / (h·w) + b_c.
    inits = _inits(path)
    (gemm,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    weight, bias = inits[gemm.input[1]], inits[gemm.input[2]]
    assert {a.name: a.i for a in gemm.attribute}.get("transB") == 1  # weight is (classes, channels)
    classic = np.einsum("ck,kij->ijc", weight, f) / (h * w) + bias
    cells = split.cell_logits(f)
    assert cells.shape == (h, w, len(CLASSES))
    np.testing.assert_allclose(cells, classic, atol=1e-4)
    # Summed over the cells the head is linear again: the image's own logits, plus (h·w - 1) biases.
    np.testing.assert_allclose(cells.sum(axis=(0, 1)) - (h * w - 1) * bias, logits, atol=1e-3)


def test_the_map_of_a_model_that_looks_at_one_corner_peaks_there(tmp_path):
    model = corner_model(tmp_path / "corner.onnx")
    m = open_model(model, device="cpu")
    split = open_cam(m)
    assert (split.point.tensor, split.point.height, split.point.width) == ("masked", 8, 8)
    _, x = load_input(bright_image(tmp_path / "img.png"), m.card)
    r = split.cam(x)
    assert int(r.p0.argmax()) == CORNER_CLASSES.index("corner")
    cells = r.cell_probs(0)
    # Cells outside the mask give the head nothing: p = softmax(bias) = 0.5 exactly; inside more.
    np.testing.assert_allclose(cells[4:, :], 0.5, atol=1e-6)
    np.testing.assert_allclose(cells[:, 4:], 0.5, atol=1e-6)
    assert (cells[:4, :4] > 0.5).all()
    pmap = r.pixel_map(0)
    assert pmap.shape == (16, 16) and pmap.min() >= 0 and pmap.max() <= 1
    peak = np.unravel_index(int(pmap.argmax()), pmap.shape)
    assert peak[0] < 8 and peak[1] < 8  # the corner's pixels (cells 0-3 cover input rows 0-7)
    assert pmap[9:, :].max() == 0 and pmap[:, 9:].max() == 0


@pytest.mark.parametrize("arch", sorted(SPLITS))
def test_every_arch_with_a_feature_map_splits_where_expected(arch, exported, images):
    path = exported(arch)
    m = open_model(path, device="cpu")
    split = open_cam(m)
    module, (h, w) = SPLITS[arch]
    assert split.point.name.startswith(module), split.describe()
    assert (split.point.height, split.point.width) == (h, w)
    _, x = load_input(next(images.glob("square/*.png")), m.card)
    logits, f = split.features(x)
    # The head on the whole map is the rest of the model: the split loses nothing.
    (whole,) = split.head.run(None, {split.head.get_inputs()[0].name: f[None]})
    np.testing.assert_allclose(whole[0], logits, atol=1e-4)
    r = split.cam(x)
    assert r.cell_logits.shape == (h, w, len(CLASSES))
    pmap = r.pixel_map(int(r.p0.argmax()))
    assert pmap.shape == (32, 32) and 0 <= pmap.min() and pmap.max() <= 1


def test_the_registry_is_covered():
    assert set(arch_names()) == set(SPLITS) | {"mlp"}


def test_a_model_without_a_feature_map_is_a_clear_error(exported):
    with pytest.raises(SplitError, match="mlp_3ch.onnx: no spatial feature map on the way to the logits"):
        open_cam(open_model(exported("mlp"), device="cpu"))


def test_layer_chooses_an_earlier_map_and_a_wrong_name_lists_the_maps(exported, images):
    m = open_model(exported("resnet18"), device="cpu")
    split = open_cam(m, layer="layer3")
    assert (split.point.height, split.point.width) == (8, 8) and split.point.channels == 256
    _, x = load_input(next(images.glob("stripes/*.png")), m.card)
    r = split.cam(x)
    assert r.cell_logits.shape == (8, 8, 3)
    with pytest.raises(SplitError, match=r"no layer named 'layer9'.*layer4\.1\.relu"):
        open_cam(m, layer="layer9")
    with pytest.raises(SplitError, match="fc.*not a floating-point .N, C, h, w. map"):
        open_cam(m, layer="fc")


def test_float16_file_gives_the_float32_maps(exported, images, tmp_path):
    from cvtool.onnxtools.fp16 import to_fp16

    path = exported("resnet18")
    half = tmp_path / "half.onnx"
    onnx.save(to_fp16(onnx.load(str(path))), str(half))
    full, h16 = open_cam(open_model(path, device="cpu")), open_cam(open_model(half, device="cpu"))
    assert h16.point.elem_type == onnx.TensorProto.FLOAT16 and h16.point.cells == 16
    _, x = load_input(next(images.glob("circle/*.png")), full.card)
    np.testing.assert_allclose(h16.cam(x).cell_logits, full.cam(x).cell_logits, atol=2e-2)


def test_int8_qdq_file_splits_at_the_dequantized_map(exported, images, tmp_path):
    from cvtool.onnxtools.quantize import quantize_model

    path = exported("resnet18")
    q = tmp_path / "int8.onnx"
    quantize_model(path, q, sorted(images.rglob("*.png")))
    m = open_model(q, device="cpu")
    split = open_cam(m)
    assert split.point.op == "DequantizeLinear" and split.point.name.endswith("(dequantized)")
    assert split.point.cells == 16
    _, x = load_input(next(images.glob("circle/*.png")), m.card)
    r, ref = split.cam(x), open_cam(open_model(path, device="cpu")).cam(x)
    np.testing.assert_allclose(r.p0, m.run(x[None])[0], atol=1e-5)
    # Quantization moves the logits a little, not the map's shape.
    assert np.corrcoef(r.cell_logits.ravel(), ref.cell_logits.ravel())[0, 1] > 0.9


def test_foreign_resnet18_with_a_fixed_batch_of_one(tmp_path, shapes_train):
    path, net, card = foreign_resnet18(tmp_path, shapes_train, size=64)
    proto = onnx.load(str(path))
    onnx.save(write_card(proto, card), str(path))
    m = open_model(path, device="cpu")
    assert m.fixed_batch == 1 and m.input_name == "pixel_values"
    split = open_cam(m)
    assert (split.point.channels, split.point.height, split.point.width) == (512, 2, 2)
    _, x = load_input(next(shapes_train.glob("circle/*.png")), card)
    logits, f = split.features(x)
    cells = split.cell_logits(f)
    # Classic CAM from PyTorch's own fc weights.
    weight, bias = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    np.testing.assert_allclose(cells, np.einsum("ck,kij->ijc", weight, f) / 4 + bias, atol=1e-4)


# --- the command --------------------------------------------------------------------------------


def test_cam_command_writes_maps_csv_and_lists_unreadable_images(tmp_path):
    model = corner_model(tmp_path / "corner.onnx")
    imgs = [bright_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(2)]
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "cam"
    r = runner.invoke(app, ["cam", *map(str, imgs), str(bad), "--model", str(model), "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert "split at masked (4×8×8): 64 cells" in r.output
    assert "broken.png" in r.stderr and "1 image(s) could not be read" in r.stderr
    rows = list(csv.DictReader((out / "cam.csv").open()))
    assert [row["name"] for row in rows] == ["1_0", "2_1"]
    for row in rows:
        assert row["target"] == "corner" and row["cells"] == "8×8" and row["layer"] == "masked"
        assert int(row["peak_row"]) < 8 and int(row["peak_col"]) < 8
        assert float(row["p_cell_min"]) == pytest.approx(0.5, abs=1e-6)
        assert float(row["p_cell_max"]) > 0.5
        cam = np.load(out / row["npy"])
        assert cam.shape == (16, 16) and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
        assert (out / row["png"]).is_file()
    assert "deletion_auc" not in rows[0]


def test_cam_command_targets_and_faithfulness(tmp_path):
    model = corner_model(tmp_path / "corner.onnx")
    img = bright_image(tmp_path / "other" / "a.png")  # the parent folder names the true class
    out = tmp_path / "cam"
    args = ["cam", str(img), "--model", str(model), "-o", str(out)]
    r = runner.invoke(app, [*args, "--target", "true", "--faithfulness", "--faithfulness-steps", "8"])
    assert r.exit_code == 0, r.output
    (row,) = csv.DictReader((out / "cam.csv").open())
    assert row["target"] == "other"
    assert float(row["deletion_auc"]) >= 0 and "random (seeded)" in r.output
    r = runner.invoke(app, [*args, "--target", "nope"])
    assert r.exit_code == 2 and "--target 'nope' is not pred, true or a class" in r.output


def test_cam_command_on_a_model_without_a_map_and_a_bad_layer(tmp_path):
    flat = linear_model(tmp_path / "linear.onnx", CLASSES, size=16)
    img = bright_image(tmp_path / "a.png")
    r = runner.invoke(app, ["cam", str(img), "--model", str(flat), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no spatial feature map" in r.output and "Traceback" not in r.output
    corner = corner_model(tmp_path / "corner.onnx")
    r = runner.invoke(app, ["cam", str(img), "-m", str(corner), "--layer", "pool", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--layer pool (tensor pooled) is not" in r.output
    assert "feature maps: conv (4×8×8); relu (4×8×8); masked (4×8×8)" in r.output


# --- evaluate --cam -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corner_data(tmp_path_factory):
    """Bright images in both class folders: the 'other' ones are all misclassified as 'corner'."""
    root = tmp_path_factory.mktemp("corner_data")
    for cls in CORNER_CLASSES:
        for i in range(3):
            bright_image(root / "data" / cls / f"{i}.png", seed=10 * i + len(cls))
    return root / "data", corner_model(root / "corner.onnx")


def test_evaluate_makes_cams_by_default_and_removes_them_when_off(corner_data, tmp_path):
    import json

    from cvtool.evaluation.run import evaluate

    data, model = corner_data
    m = open_model(model, device="cpu")
    r = evaluate(m, data, tmp_path)
    assert r.cam is not None and (r.cam.layer, r.cam.cells, r.cam.images) == ("masked", "8×8", 6)
    assert "cam/" in r.files
    rows = list(csv.DictReader((tmp_path / "cam" / "cam.csv").open()))
    # Three failures (true other, predicted corner: two targets each) and three correct images.
    assert sorted(row["name"].split("_")[0] for row in rows) == ["correct"] * 3 + ["failure"] * 6
    assert {row["target"] for row in rows if row["name"].startswith("failure")} == {"corner", "other"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["cam"] == {"layer": "masked", "tensor": "masked", "cells": "8×8", "images": 6}
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Class activation maps" in html and "ReciproCAM at masked (8×8 cells)" in html
    assert html.count("; CAM at masked, 8×8 cells</figcaption>") == 6  # one figure per image
    evaluate(m, data, tmp_path, cam=0)
    assert not (tmp_path / "cam").exists()
    assert "Class activation maps" not in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_evaluate_without_a_feature_map(tmp_path):
    from cvtool.evaluation.run import evaluate

    model = linear_model(tmp_path / "linear.onnx", CLASSES, size=32)
    data = make_image_folder(tmp_path / "data", per_class=2, seed=1)
    r = evaluate(open_model(model, device="cpu"), data, tmp_path / "out")
    assert r.cam is None and not (tmp_path / "out" / "cam").exists()  # by default: quietly none
    with pytest.raises(SplitError, match="no spatial feature map"):
        evaluate(open_model(model, device="cpu"), data, tmp_path / "out2", cam=2)
    assert not (tmp_path / "out2").exists()  # refused before anything ran


def test_cli_evaluate_with_faithfulness_scores_cam_and_occlusion(corner_data, tmp_path):
    import json

    data, model = corner_data
    out = tmp_path / "eval"
    r = runner.invoke(
        app,
        ["evaluate", str(data), "-m", str(model), "-o", str(out), "--cam", "1", "--occlusion", "1",
         "--faithfulness", "--faithfulness-steps", "10"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "class activation maps of 2 image(s) at masked (8×8 cells)" in r.output
    assert "faithfulness, 10 steps, baseline mean" in r.output
    f = json.loads((out / "metrics.json").read_text())["faithfulness"]
    assert (f["steps"], f["seed"], f["baseline"]) == (10, 0, "mean")
    assert f["cam"]["maps"] == f["occlusion"]["maps"] == 3
    for kind in ("cam", "occlusion"):
        assert f[kind]["deletion_auc"] < f[kind]["random_deletion_auc"]
        assert f[kind]["insertion_auc"] > f[kind]["random_insertion_auc"]
    row = next(csv.DictReader((out / "occlusion" / "occlusion.csv").open()))
    assert "deletion_auc" in row
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("deletion AUC (lower is better)") == 2  # next to the CAMs and the occlusion maps


def test_a_calibrated_card_divides_the_cell_logits_by_its_temperature(tmp_path):
    import dataclasses

    path = corner_model(tmp_path / "corner.onnx")
    proto = onnx.load(str(path))
    plain = open_model(path, device="cpu")
    card = dataclasses.replace(plain.card, calibration={"method": "temperature", "temperature": 3.0})
    onnx.save(write_card(proto, card), str(tmp_path / "calibrated.onnx"))
    m = open_model(tmp_path / "calibrated.onnx", device="cpu")
    _, x = load_input(bright_image(tmp_path / "img.png"), m.card)
    r, r1 = open_cam(m).cam(x), open_cam(plain).cam(x)
    np.testing.assert_allclose(r.p0, m.run(x[None])[0], atol=1e-6)  # as predict reports it
    np.testing.assert_allclose(r.cell_logits, r1.cell_logits)  # the logits themselves are the model's
    z = r1.cell_logits[0, 0] / 3.0
    assert r.cell_probs(0)[0, 0] == pytest.approx(np.exp(z[0]) / np.exp(z).sum(), abs=1e-6)
