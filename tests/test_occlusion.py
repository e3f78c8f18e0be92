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
from cvtool.evaluation.occlusion import baseline_for, occlude, occlude_file, window_positions
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


def test_resolve_window_fills_in_defaults_and_checks_them_against_the_input():
    from cvtool.errors import CvtoolError
    from cvtool.evaluation.occlusion import OcclusionError, resolve_window

    assert issubclass(OcclusionError, CvtoolError)
    assert resolve_window((28, 28)) == (7, 3)  # the classic 7-pixel window, half of it as stride
    assert resolve_window((224, 160)) == (20, 10)  # 1/8 of the shorter side
    assert resolve_window((32, 32), window=8) == (8, 4)
    assert resolve_window((32, 32), stride=2) == (7, 2)
    assert resolve_window((5, 5)) == (5, 2)  # never more than the input
    with pytest.raises(OcclusionError, match=r"window 17 does not fit the model input 16×20"):
        resolve_window((16, 20), window=17)
    with pytest.raises(OcclusionError, match=r"stride 9 .*window 8"):
        resolve_window((32, 32), window=8, stride=9)
    with pytest.raises(OcclusionError, match=r"stride 8 .*window 7"):  # against the default window
        resolve_window((32, 32), stride=8)


def test_occlusion_maps_of_a_list_equal_one_image_at_a_time(shapes_train, tmp_path):
    from cvtool.evaluation.occlusion import MapRequest, num_positions, occlusion_maps

    model = open_model(linear_model(tmp_path / "lin.onnx", ("circle", "square", "stripes"), scale=0.2), "cpu")
    a, b = shapes_train / "square" / "3.png", shapes_train / "circle" / "1.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    requests = [
        MapRequest("first", a),  # the predicted class
        MapRequest("gone", broken),
        MapRequest("second", b, targets=(0, 2), true=0, pred=2),
    ]
    calls = []
    maps, failed = occlusion_maps(
        model.run, model.card, requests, tmp_path / "out", 8, 4, "zero", 16, on_progress=calls.append
    )
    assert list(failed) == [broken] and "broken.png" not in failed[broken]
    assert sum(calls) == 2 * num_positions((32, 32), 8, 4)
    assert [m.name for m in maps] == ["first", "second"]
    _, res = occlude_file(model.run, a, model.card, 8, 4, "zero")
    pred = int(res.p0.argmax())
    assert [c.k for c in maps[0].classes] == [pred]
    assert maps[0].caption == f"3.png: predicted {model.card.class_names[pred]} (p = {res.p0[pred]:.3f})"
    np.testing.assert_allclose(np.load(maps[0].classes[0].npy), res.pixel_map(pred), atol=1e-6)
    _, res = occlude_file(model.run, b, model.card, 8, 4, "zero")
    assert [c.cls for c in maps[1].classes] == ["circle", "stripes"]
    assert maps[1].caption.startswith("1.png: true circle, predicted stripes (p = ")
    for c in maps[1].classes:
        pmap = res.pixel_map(c.k)
        np.testing.assert_allclose(np.load(c.npy), pmap, atol=1e-6)
        assert c.p_min == pytest.approx(pmap.min(), abs=1e-6)
        assert (c.row, c.col) == np.unravel_index(np.argmin(pmap), pmap.shape)
    rows = list(csv.DictReader((tmp_path / "out" / "occlusion.csv").open()))
    assert [(r["name"], r["target"]) for r in rows] == [
        ("first", model.card.class_names[pred]), ("second", "circle"), ("second", "stripes")
    ]  # fmt: skip
    assert all((tmp_path / "out" / r["png"]).is_file() for r in rows)


def test_occlusion_requests_resolve_the_target(tmp_path):
    from cvtool.errors import CvtoolError
    from cvtool.evaluation.explain import occlusion_requests

    names = ("bright", "dark")
    folder = tmp_path / "imgs" / "bright"
    folder.mkdir(parents=True)
    a, b = _bright(folder / "a.png"), _bright(folder / "b.png")
    reqs = occlusion_requests([folder], names, "true")
    assert [(r.name, r.path, r.targets) for r in reqs] == [("1_a", a, (0,)), ("2_b", b, (0,))]
    assert [r.targets for r in occlusion_requests([b, a], names, "pred")] == [(), ()]
    assert occlusion_requests([a], names, "dark")[0].targets == (1,)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\na,dark\n")
    assert occlusion_requests([a], names, "true", labels)[0].targets == (1,)
    with pytest.raises(CvtoolError, match="'cat' is not pred, true or a class"):
        occlusion_requests([a], names, "cat")
    with pytest.raises(CvtoolError, match="--labels"):
        occlusion_requests([b], names, "true", labels)  # b is not in the CSV
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CvtoolError, match="no image files"):
        occlusion_requests([empty], names, "pred")


def test_evaluate_checks_occlusion_settings_before_predicting(tmp_path):
    from cvtool.errors import CvtoolError
    from cvtool.evaluation.run import evaluate

    model = open_model(region_model(tmp_path / "region.onnx", REGION), device="cpu")
    data = tmp_path / "data" / "bright"
    data.mkdir(parents=True)
    _bright(data / "a.png")
    out = tmp_path / "out"
    bad = [({"window": 17}, "window 17"), ({"window": 4, "stride": 5}, "stride 5")]
    for kwargs, message in [*bad, ({"baseline": "grey"}, "grey")]:
        with pytest.raises(CvtoolError, match=message):
            evaluate(model, data.parent, out, occlusion=1, **kwargs)
        assert not out.exists()  # refused before anything was predicted or written


def test_cli_refuses_an_unknown_baseline_and_a_window_larger_than_the_input(tmp_path):
    model = region_model(tmp_path / "region.onnx", REGION)
    image = _bright(tmp_path / "a.png")
    r = runner.invoke(app, ["occlusion", str(image), "--model", str(model), "--baseline", "grey"])
    assert r.exit_code == 2 and "grey" in r.output
    r = runner.invoke(app, ["occlusion", str(image), "--model", str(model), "--window", "17"])
    assert r.exit_code == 2 and "window 17 does not fit the model input 16×16" in r.output
    r = runner.invoke(app, ["occlusion", str(image), "--model", str(model), "--window", "4", "--stride", "5"])
    assert r.exit_code == 2 and "stride 5" in r.output


def test_help_shows_the_window_and_stride_defaults():
    # Text in [brackets] is Rich markup: a default written that way vanished from --help.
    for command in ("occlusion", "evaluate"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        assert r.exit_code == 0, r.output
        assert "(default: half the window)" in r.output
        assert "(default: 7, or 1/8 of the shorter side when larger)" in r.output
        assert "mean|zero|blur" in r.output
