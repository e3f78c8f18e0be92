"""Suspected label errors: cleanlab's confident learning on synthetic and on real held-out probabilities."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from conftest import CLASSES, shape_image
from helpers_evaluate import linear_model
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.oof import write_oof
from cvtool.evaluation.run import evaluate
from cvtool.evaluation.suspects import confident_thresholds, find_suspects, rank_suspects
from cvtool.infer.session import open_model

runner = CliRunner()


def _cleanlab(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return find_label_issues(labels, probs, filter_by="confident_learning", n_jobs=1)


def planted(
    seed: int, n: int = 600, k: int = 4, flip: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model that is usually right about the true class; `flip` of the given labels are wrong."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(2.0, 5.0, n)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = rng.random(n) < flip
    given[flipped] = (true[flipped] + rng.integers(1, k, flipped.sum())) % k
    return given, probs, flipped


@pytest.mark.parametrize("seed", range(5))
def test_same_set_as_cleanlab_on_planted_errors(seed):
    given, probs, flipped = planted(seed)
    mine, suspected = find_suspects(given, probs)
    assert mine.sum() > 0.5 * flipped.sum()  # it finds most planted errors…
    assert (mine & flipped).sum() > 0.8 * mine.sum()  # …and mostly those
    np.testing.assert_array_equal(mine, _cleanlab(given, probs))


def test_differs_from_cleanlab_only_where_the_paper_does():
    """cleanlab takes the model's top class when two or more classes pass their thresholds, even
    if the top one does not; the paper (and cvtool) take the top of those that pass."""
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(100):
        n, k = 400, int(rng.integers(2, 8))
        probs = rng.dirichlet(np.full(k, rng.uniform(0.2, 2.0)), n)
        labels = rng.integers(0, k, n)
        labels[:k] = np.arange(k)
        mine, suspected = find_suspects(labels, probs)
        theirs = _cleanlab(labels, probs)
        t = confident_thresholds(labels, probs)
        over = probs >= t - 1e-6
        top = probs.argmax(axis=1)
        paper_case = (
            (over.sum(axis=1) >= 2) & ~over[np.arange(n), top] & (top != labels) & (suspected == labels)
        )
        np.testing.assert_array_equal(mine != theirs, paper_case)
        differ += int(paper_case.sum())
        assert np.all(over[mine, suspected[mine]])  # a suspected class is always over its threshold
    assert differ < 20  # rare: of about 30,000 suspects

    # The case itself. Thresholds t0 = (0.35 + 0.25) / 2 = 0.30, t1 = 0.9, t2 = 0.2. Image 0,
    # labeled 0: p = (0.35, 0.40, 0.25), over t0 and t2, not t1. cvtool: its own class is the top
    # of those over threshold, no suspect. cleanlab: suspect, for class 1 (the top, under t1).
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.35, 0.40, 0.25], [0.25, 0.05, 0.70], [0.05, 0.90, 0.05], [0.60, 0.20, 0.20]])
    mine, _ = find_suspects(labels, probs)
    theirs = _cleanlab(labels, probs)
    assert not mine[0] and theirs[0]
    np.testing.assert_array_equal(mine[1:], theirs[1:])


def test_rule_by_hand():
    # Class thresholds: t0 = (0.9 + 0.6 + 0.3) / 3 = 0.6, t1 = (0.8 + 0.2) / 2 = 0.5.
    labels = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.7, 0.8, 0.2])
    probs = np.stack([1 - p1, p1], axis=1)
    np.testing.assert_allclose(confident_thresholds(labels, probs), [0.6, 0.5])
    mask, suspected = find_suspects(labels, probs)
    # Image 2: labeled 0, p1 = 0.7 ≥ 0.5 and the model's top class is 1. Image 4: labeled 1,
    # p0 = 0.8 ≥ 0.6. Image 1: p1 = 0.4 < t1, so not confidently in 1.
    np.testing.assert_array_equal(mask, [False, False, True, False, True])
    ranked = rank_suspects([f"{i}.png" for i in range(5)], labels, probs)
    assert [s.path for s in ranked] == ["4.png", "2.png"]  # margins 0.6 and 0.4
    assert ranked[0].margin == pytest.approx(0.6) and ranked[0].suspected == 0


def test_model_agreeing_with_the_label_is_no_suspect():
    # p(1) = 0.45 is over class 1's low threshold, but the model's top class is the given 0.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.55, 0.45], [0.95, 0.05], [0.6, 0.4], [0.7, 0.3]])
    mask, suspected = find_suspects(labels, probs)
    assert suspected[0] == 1 and not mask[0]
    np.testing.assert_array_equal(mask, _cleanlab(labels, probs))


def _two_fold_probs(images: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 12) -> np.ndarray:
    """Held-out logits from a tiny CNN trained briefly on each half, predicted on the other."""
    import torch

    torch.manual_seed(seed)
    x = torch.tensor(images[:, None] / 255.0, dtype=torch.float32)
    y = torch.tensor(labels)
    half = np.random.default_rng(seed).permutation(len(x)) % 2 == 0
    out = np.zeros((len(x), len(CLASSES)), np.float32)
    for fold in (half, ~half):
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64, len(CLASSES)),
        )  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        train = torch.tensor(np.flatnonzero(~fold))
        for _ in range(epochs):
            for batch in train[torch.randperm(len(train))].split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                opt.step()
        with torch.no_grad():
            out[fold] = net(x[torch.tensor(np.flatnonzero(fold))]).numpy()
    return out


@pytest.fixture(scope="module")
def noisy_oof(tmp_path_factory):
    """Generated shapes with 10 % of the labels flipped, their images, and an out-of-fold CSV."""
    root = tmp_path_factory.mktemp("oof")
    rng = np.random.default_rng(3)
    n = 600
    true = np.arange(n) % len(CLASSES)
    images = np.stack([np.asarray(shape_image(CLASSES[t], rng, mode="L")) for t in true])
    given = true.copy()
    flipped = rng.random(n) < 0.1
    given[flipped] = (true[flipped] + rng.integers(1, len(CLASSES), flipped.sum())) % len(CLASSES)
    paths = []
    (root / "img").mkdir()
    from PIL import Image

    for i, a in enumerate(images):
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        paths.append(f"img/{i}.png")  # relative: found beside the CSV
    logits = _two_fold_probs(images, given)
    write_oof(root / "oof.csv", paths, given.tolist(), [1] * n, logits, CLASSES)
    return root, given, flipped, logits


def test_real_held_out_probabilities_agree_with_cleanlab(noisy_oof, tmp_path):
    root, given, flipped, logits = noisy_oof
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    mine, _ = find_suspects(given, probs)
    theirs = _cleanlab(given, probs)
    overlap = (mine & theirs).sum() / max(1, (mine | theirs).sum())
    assert overlap >= 0.9, overlap
    assert (mine & flipped).sum() >= 0.7 * flipped.sum()  # the planted flips are found

    # The same through evaluate --oof: suspects.csv holds exactly that set, ranked by margin.
    model = linear_model(tmp_path / "m.onnx", CLASSES, channels=1, size=32)
    data = root / "img"
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("id,label\n" + "".join(f"{i},{CLASSES[g]}\n" for i, g in enumerate(given)))
    r = evaluate(
        open_model(model, device="cpu"), data, tmp_path / "out", labels_csv, suspects=8, oof=root / "oof.csv"
    )
    rows = list(csv.DictReader((tmp_path / "out" / "suspects.csv").open()))
    assert {int(re.search(r"(\d+)\.png$", row["file"]).group(1)) for row in rows} == set(np.flatnonzero(mine))
    margins = [float(row["margin"]) for row in rows]
    assert margins == sorted(margins, reverse=True)
    assert r.suspects is not None and r.suspects.source == str(root / "oof.csv")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["suspects"]
    assert saved["count"] == len(rows) and saved["n"] == len(given)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Suspected label errors" in html and "suspects.png" in r.files
    assert (tmp_path / "out" / "suspects.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_suspects_from_the_evaluated_images(shapes_test, tmp_path):
    test_dir, labels = shapes_test
    model = linear_model(tmp_path / "m.onnx", CLASSES, seed=1)
    out = tmp_path / "out"
    r = evaluate(open_model(model, device="cpu"), test_dir, out, labels, suspects=3)
    per_image = list(csv.DictReader((out / "per_image.csv").open()))
    idx = {c: i for i, c in enumerate(CLASSES)}
    # per_image.csv has only the top-5 probabilities; three classes: all of them.
    probs = np.zeros((len(per_image), 3))
    for n, row in enumerate(per_image):
        for j in range(1, 4):
            probs[n, idx[row[f"top{j}"]]] = float(row[f"p_top{j}"])
    y = np.array([idx[row["true"]] for row in per_image])
    expected = {per_image[i]["path"] for i in np.flatnonzero(find_suspects(y, probs)[0])}
    assert r.suspects is not None and {s.path for s in r.suspects.suspects} == expected
    assert r.suspects.source == "evaluated images"
    # A second run without --suspects leaves no suspects files behind.
    evaluate(open_model(model, device="cpu"), test_dir, out, labels)
    assert not (out / "suspects.csv").exists() and not (out / "suspects.png").exists()


def test_cli_oof_needs_suspects_and_a_matching_file(shapes_test, tmp_path):
    test_dir, labels = shapes_test
    model = linear_model(tmp_path / "m.onnx", CLASSES)
    base = ["evaluate", str(test_dir), "--labels", str(labels), "-m", str(model), "-o", str(tmp_path / "o")]
    res = runner.invoke(app, [*base, "--oof", str(tmp_path / "oof.csv")])
    assert res.exit_code == 2 and "--suspects" in res.output
    write_oof(tmp_path / "oof.csv", ["a.png"], [0], [1], np.zeros((1, 2), np.float32), ("circle", "square"))
    res = runner.invoke(app, [*base, "--suspects", "5", "--oof", str(tmp_path / "oof.csv")])
    assert res.exit_code == 2 and "oof.csv" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "metrics.json").exists()  # refused before predicting
