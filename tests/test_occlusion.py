"""Occlusion maps: equal to a per-position reference, find the region a model depends on, CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from helpers_evaluate import linear_model, region_model
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluate.occlusion import baseline_for, occlude, occlude_file, window_positions
from cvtool.images import load_and_preprocess, load_image, resize_and_crop
from cvtool.infer.session import open_model

runner = CliRunner()


def _reference_map(run, x, baseline, window, stride, target):
    """The definition, one occluded image per model call: mean p(target) over covering windows."""
    c, h, w = x.shape
    total, count = np.zeros((h, w)), np.zeros((h, w))
    y = 0
    while True:
        xx = 0
        while True:
            occluded = x.copy()
            occluded[:, y : y + window, xx : xx + window] = baseline[:, y : y + window, xx : xx + window]
            p = run(occluded[None])[0, target]
            total[y : y + window, xx : xx + window] += p
            count[y : y + window, xx : xx + window] += 1
            if xx + window >= w:
                break
            xx += stride
        if y + window >= h:
            break
        y += stride
    assert count.min() >= 1
    return total / count


@pytest.mark.parametrize(("size", "window", "stride"), [(32, 7, 3), (32, 8, 8), (28, 7, 1), (10, 10, 1)])
def test_window_positions_follow_captum(size, window, stride):
    pos = window_positions(size, window, stride)
    # Captum: ceil((size - window) / stride) + 1 shifts of `stride` each.
    assert len(pos) == math.ceil((size - window) / stride) + 1
    assert pos[0] == 0 and np.all(np.diff(pos) == stride)
    assert pos[-1] + window >= size > pos[-1]


def test_window_and_stride_are_checked():
    with pytest.raises(ValueError, match="stride"):
        window_positions(28, 7, 8)
    with pytest.raises(ValueError, match="window"):
        window_positions(28, 29, 1)


@pytest.fixture(params=["simple_cnn", "linear"])
def small_model(request, rgb_model, tmp_path):
    """The exported random CNN (probabilities near uniform) and a linear model (confident)."""
    if request.param == "simple_cnn":
        return rgb_model
    return linear_model(tmp_path / "linear.onnx", ("circle", "square", "stripes"), scale=0.2, seed=1)


@pytest.mark.parametrize(("window", "stride", "baseline"), [(7, 3, "mean"), (8, 8, "zero"), (5, 4, "blur")])
def test_map_equals_a_straightforward_per_position_reference(
    small_model, shapes_train, window, stride, baseline
):
    model = open_model(small_model, device="cpu")
    path = shapes_train / "square" / "3.png"
    shown, res = occlude_file(model.run, path, model.card, window, stride, baseline, batch_size=10)
    x = load_and_preprocess(path, model.card)
    base = np.broadcast_to(np.asarray(baseline_for(baseline, shown, model.card, window), np.float32), x.shape)
    np.testing.assert_allclose(res.p0, model.run(x[None])[0], atol=1e-6)
    for target in range(model.card.num_classes):
        ref = _reference_map(model.run, x, base, window, stride, target)
        np.testing.assert_allclose(res.pixel_map(target), ref, atol=1e-5)


def test_baselines_in_model_input_space(rgb_model, shapes_train):
    card = open_model(rgb_model, device="cpu").card
    shown = resize_and_crop(load_image(shapes_train / "circle" / "0.png", card), card)
    assert baseline_for("mean", shown, card, 7) == 0.0  # the training mean colour
    zero = baseline_for("zero", shown, card, 7)  # black: (0 - mean) / std per channel
    np.testing.assert_allclose(zero, np.full((3, 32, 32), (0 - 0.2) / 0.3), rtol=1e-6)
    blur = baseline_for("blur", shown, card, 7)
    x = load_and_preprocess(shapes_train / "circle" / "0.png", card)
    assert blur.shape == x.shape and blur.std() < x.std()  # detail removed
    with pytest.raises(ValueError, match="baseline"):
        baseline_for("grey", shown, card, 7)


def test_batches_do_not_change_the_result(rgb_model, shapes_train):
    model = open_model(rgb_model, device="cpu")
    x = load_and_preprocess(shapes_train / "stripes" / "1.png", model.card)
    a = occlude(model.run, x, 0.0, 6, 2, batch_size=1)
    b = occlude(model.run, x, 0.0, 6, 2, batch_size=500)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    calls = []
    occlude(model.run, x, 0.0, 6, 2, batch_size=64, on_progress=calls.append)
    assert sum(calls) == len(a.ys) * len(a.xs) == 14 * 14
    assert calls == [49] * 4  # equal batches of at most 64, not 64 + 64 + 64 + 4


REGION = (3, 7, 9, 13)  # rows 3-6, columns 9-12 of a 16×16 input


def _bright(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(180, 230, (16, 16)).astype(np.uint8), "L").save(path)
    return path


def test_the_map_minimum_lies_in_the_only_region_the_model_reads(tmp_path):
    model = open_model(region_model(tmp_path / "region.onnx", REGION), device="cpu")
    image = _bright(tmp_path / "bright.png")
    _, res = occlude_file(model.run, image, model.card, window=3, stride=1, baseline="mean")
    pmap = res.pixel_map(0)  # p(bright)
    r, c = np.unravel_index(np.argmin(pmap), pmap.shape)
    r0, r1, c0, c1 = REGION
    assert r0 <= r < r1 and c0 <= c < c1
    # Pixels whose windows never touch the region keep the unoccluded probability exactly.
    far = np.ones_like(pmap, bool)
    far[max(r0 - 2, 0) : r1 + 2, max(c0 - 2, 0) : c1 + 2] = False
    np.testing.assert_allclose(pmap[far], res.p0[0], atol=1e-6)
    assert pmap.min() < res.p0[0] - 0.05


def test_cli_occlusion(tmp_path):
    model = region_model(tmp_path / "region.onnx", REGION)
    folder = tmp_path / "imgs" / "bright"
    folder.mkdir(parents=True)
    a = _bright(folder / "a.png")
    b = _bright(folder / "b.png")
    out = tmp_path / "out"
    args = [
        "occlusion",
        str(a),
        str(b),
        "--model",
        str(model),
        "--window",
        "3",
        "--stride",
        "1",
        "-o",
        str(out),
    ]
    r = runner.invoke(app, [*args, "--target", "true"])  # true class from the parent folder's name
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "occlusion.csv").open()))
    assert [row["target"] for row in rows] == ["bright", "bright"]
    for row in rows:
        m = np.load(out / row["npy"])
        assert m.shape == (16, 16)
        assert REGION[0] <= int(row["min_row"]) < REGION[1] and REGION[2] <= int(row["min_col"]) < REGION[3]
        assert (out / row["png"]).read_bytes()[:4] == b"\x89PNG"

    r = runner.invoke(app, [*args, "--target", "dark"])
    assert r.exit_code == 0 and "p(dark)" in r.output
    r = runner.invoke(app, [*args, "--target", "cat"])
    assert r.exit_code == 2 and "cat" in r.output
    loose = tmp_path / "loose.png"
    _bright(loose)
    r = runner.invoke(
        app, ["occlusion", str(loose), "--model", str(model), "--target", "true", "-o", str(out)]
    )
    assert r.exit_code == 2 and "--labels" in r.output

    broken = folder / "broken.png"
    broken.write_bytes(b"not an image")
    r = runner.invoke(app, ["occlusion", str(folder), "--model", str(model), "--window", "4", "-o", str(out)])
    assert r.exit_code == 1 and "broken.png" in r.output
    assert len(list(csv.DictReader((out / "occlusion.csv").open()))) == 2  # a.png and b.png still done
