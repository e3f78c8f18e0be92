"""Deletion / insertion AUC: the trapezoid rule, exact curves on a known model, and meaningful maps
(CAM, occlusion) beating a random one on a model that looks at one corner."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers_cam import bright_image, corner_model
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.cam import open_cam
from cvtool.evaluation.faithfulness import (
    FAITHFULNESS_CSV_HEADER,
    FaithfulnessError,
    FaithfulnessSettings,
    auc,
    faithfulness,
    mean_scores,
    random_saliency,
    ranking,
)
from cvtool.evaluation.occlusion import load_input
from cvtool.infer.session import open_model

runner = CliRunner()


@pytest.mark.parametrize("value", [0.0, 0.25, 0.7, 1.0])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_auc_of_a_constant_is_that_constant(value, steps):
    assert auc([value] * (steps + 1)) == pytest.approx(value, abs=1e-12)


def test_auc_is_the_trapezoid_rule():
    assert auc([0, 1]) == pytest.approx(0.5)
    assert auc([1, 0, 1]) == pytest.approx(0.5)
    assert auc([0, 1, 1], [0, 0.5, 1]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        auc([1.0])


def test_ranking_is_most_salient_first_with_ties_in_raster_order():
    s = np.array([[0.1, 0.9], [0.9, 0.0]])
    assert ranking(s).tolist() == [1, 2, 0, 3]
    np.testing.assert_array_equal(random_saliency((4, 5), seed=3), random_saliency((4, 5), seed=3))


def _region_run(region: np.ndarray):
    """A 'model' whose p(class 0) is the fraction of the region's pixels still at 1."""

    def run(batch: np.ndarray) -> np.ndarray:
        p = (batch[:, 0] * region).sum(axis=(1, 2)) / region.sum()
        return np.stack([p, 1 - p], axis=1)

    return run


def test_curves_are_exact_on_a_known_model():
    h = w = 8
    region = np.zeros((h, w))
    region[:2, :3] = 1  # 6 of 64 pixels matter
    x = np.ones((1, h, w), np.float32)
    f = faithfulness(_region_run(region), x, region, 0.0, target=0, steps=16, batch_size=7)
    counts = np.rint(np.arange(17) * 64 / 16)
    np.testing.assert_allclose(f.saliency.fractions, counts / 64)
    # The map ranks the region first: deletion removes it in the first 6 pixels, insertion restores it.
    np.testing.assert_allclose(f.saliency.deletion, np.clip(1 - counts / 6, 0, 1), atol=1e-6)
    np.testing.assert_allclose(f.saliency.insertion, np.clip(counts / 6, 0, 1), atol=1e-6)
    assert f.saliency.deletion_auc < f.random.deletion_auc
    assert f.saliency.insertion_auc > f.random.insertion_auc
    # Both curves end where they must: the image itself and the all-baseline image.
    assert f.random.deletion[0] == f.random.insertion[-1] == 1
    assert f.random.deletion[-1] == f.random.insertion[0] == 0
    assert f.steps == 16 and len(f.csv_cells()) == len(FAITHFULNESS_CSV_HEADER)
    assert mean_scores([f, f])["deletion_auc"] == pytest.approx(f.saliency.deletion_auc, abs=1e-6)


def test_all_steps_of_a_map_go_in_one_or_two_batches():
    sizes = []
    region = np.ones((6, 6))

    def run(batch):
        sizes.append(len(batch))
        return _region_run(region)(batch)

    faithfulness(run, np.ones((1, 6, 6), np.float32), region, 0.0, 0, steps=20, batch_size=64)
    assert sizes == [40, 40]  # 4 × 20 images: deletion 21 + insertion 19, for the map and the random one


def test_bad_settings_are_clear_errors():
    with pytest.raises(FaithfulnessError, match="at least 1"):
        FaithfulnessSettings(steps=0)
    with pytest.raises(FaithfulnessError, match="does not match"):
        faithfulness(lambda b: b, np.ones((1, 4, 4), np.float32), np.ones((3, 3)), 0.0, 0)


def test_cam_beats_the_random_map_on_the_corner_model(tmp_path):
    m = open_model(corner_model(tmp_path / "corner.onnx"), device="cpu")
    split = open_cam(m)
    _, x = load_input(bright_image(tmp_path / "img.png"), m.card)
    cam = split.cam(x).pixel_map(0)
    f = faithfulness(m.run, x, cam, 0.0, target=0, steps=20)
    assert f.saliency.deletion_auc < f.random.deletion_auc
    assert f.saliency.insertion_auc > f.random.insertion_auc
    # Deleting the corner leaves the head nothing: p(corner) falls to softmax(bias) = 0.5.
    assert f.saliency.deletion[-1] == pytest.approx(0.5, abs=1e-6)


def test_cam_and_occlusion_commands_add_the_scores(tmp_path):
    model = corner_model(tmp_path / "corner.onnx")
    img = bright_image(tmp_path / "img.png")
    for command in ("cam", "occlusion"):
        out = tmp_path / command
        r = runner.invoke(
            app,
            [command, str(img), "-m", str(model), "-o", str(out), "--faithfulness",
             "--faithfulness-steps", "10", "--baseline", "zero"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        (row,) = csv.DictReader((out / f"{command}.csv").open())
        d, i = float(row["deletion_auc"]), float(row["insertion_auc"])
        assert d < float(row["random_deletion_auc"]) and i > float(row["random_insertion_auc"]), row
        assert "faithfulness, 10 steps, baseline zero" in r.output and "random (seeded)" in r.output
