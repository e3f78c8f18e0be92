"""Checkpoint → ONNX: the card travels, batches are dynamic, ONNX Runtime equals PyTorch."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, shape_image
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import CARD_METADATA_KEY, ModelCard
from cvtool.images import load_and_preprocess
from cvtool.infer.session import open_model
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint


def test_card_round_trip_checkpoint_to_onnx(rgb_model):
    ckpt = load_checkpoint(rgb_model.with_suffix(".pt"))
    original = ModelCard.from_dict(ckpt["card"])
    proto = onnx.load(str(rgb_model))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelCard.from_json(meta[CARD_METADATA_KEY]) == original
    m = open_model(rgb_model, device="cpu")
    assert m.has_card
    assert m.card == original
    assert m.card.class_names == CLASSES
    assert (m.input_name, m.output_name, m.fixed_batch) == ("input", "logits", None)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_dynamic_batch_sizes(rgb_model, n):
    m = open_model(rgb_model, device="cpu")
    x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
    probs = m.run(x)
    assert probs.shape == (n, len(CLASSES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fixture,mode", [("rgb_model", "RGB"), ("gray_model", "L")])
def test_parity_with_pytorch_on_image_files(request, tmp_path, fixture, mode):
    """Real PNG/JPEG files through the shared preprocessing: ORT probs == PyTorch probs."""
    path = request.getfixturevalue(fixture)
    net, card = model_from_checkpoint(load_checkpoint(path.with_suffix(".pt")))
    rng = np.random.default_rng(0)
    files = []
    for i, kind in enumerate(CLASSES * 2):
        img = shape_image(kind, rng, size=48 + 8 * i, mode=mode)  # sizes force resize + crop
        f = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        img.save(f)
        files.append(f)
    x = np.stack([load_and_preprocess(f, card) for f in files])
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    got = open_model(path, device="cpu").run(x)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_export_rejects_non_checkpoint(tmp_path):
    from cvtool.export.onnx_export import export_checkpoint
    from cvtool.train.checkpoint import CheckpointError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        export_checkpoint(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


# --- batch options, --verify ----------------------------------------------------------------------

runner = CliRunner()


def test_fixed_batch_export_runs_any_number_of_images(rgb_model, tmp_path):
    ckpt = rgb_model.with_suffix(".pt")
    out = tmp_path / "fixed.onnx"
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--batch", "4"])
    assert r.exit_code == 0, r.output
    assert "fixed batch 4" in r.output
    m = open_model(out, device="cpu")
    assert m.fixed_batch == 4
    dynamic = open_model(rgb_model, device="cpu")
    x = np.random.default_rng(1).normal(size=(7, 3, 32, 32)).astype(np.float32)
    # 7 images through a batch-4 graph (padded) equal the dynamic graph's answer.
    np.testing.assert_allclose(m.run(x), dynamic.run(x), atol=1e-6)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_batch_values(rgb_model, tmp_path, value):
    r = runner.invoke(
        app, ["export", str(rgb_model.with_suffix(".pt")), "-o", str(tmp_path / "m.onnx"), "--batch", value]
    )
    assert r.exit_code == 2 and "--batch" in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_verify_on_a_labeled_flat_folder(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    ckpt = rgb_model.with_suffix(".pt")
    out = tmp_path / "v.onnx"
    r = runner.invoke(
        app, ["export", str(ckpt), "-o", str(out), "--verify", str(test_dir), "--labels", str(labels)]
    )
    assert r.exit_code == 0, r.output
    n = len(list(test_dir.glob("*.png")))
    # Reference: PyTorch's accuracy on the same files, computed here directly.
    net, card = model_from_checkpoint(load_checkpoint(ckpt))
    truth = dict(list(csv.reader(labels.open()))[1:])
    files = sorted(test_dir.glob("*.png"))
    x = np.stack([load_and_preprocess(f, card) for f in files])
    with torch.no_grad():
        top = net(torch.from_numpy(x)).argmax(1).numpy()
    acc = np.mean([CLASSES[t] == truth[f.stem] for f, t in zip(files, top, strict=True)])
    assert f"{n} images: top-1 agreement 100.00%" in r.output
    assert f"top-1 accuracy PyTorch {acc:.2%}, ONNX {acc:.2%}" in r.output


def test_verify_on_an_unlabeled_folder_and_a_bad_image(rgb_model, shapes_test, tmp_path):
    test_dir, _ = shapes_test
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted(test_dir.glob("*.png"))[:5]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "v.onnx"
    r = runner.invoke(
        app, ["export", str(rgb_model.with_suffix(".pt")), "-o", str(out), "--verify", str(folder)]
    )
    assert r.exit_code == 1, r.output  # written, but one verification image was unreadable (listed)
    assert out.exists()
    assert "5 images: top-1 agreement 100.00%" in r.output and "accuracy" not in r.output
    assert "zz_broken.jpg" in r.output


def test_verify_failure_exits_non_zero_and_writes_nothing(rgb_model, shapes_test, tmp_path, monkeypatch):
    """A PyTorch/ONNX disagreement (simulated: the reference's classes are rotated) fails export."""
    import cvtool.export.verify as verify

    real = verify.torch_probs
    monkeypatch.setattr(verify, "torch_probs", lambda n, t=1.0: lambda x: np.roll(real(n, t)(x), 1, axis=1))
    test_dir, labels = shapes_test
    out = tmp_path / "v.onnx"
    args = ["export", str(rgb_model.with_suffix(".pt")), "-o", str(out), "--verify", str(test_dir)]
    r = runner.invoke(app, [*args, "--labels", str(labels)])
    assert r.exit_code == 1
    assert "disagrees with PyTorch" in r.output and "nothing written" in r.output
    assert "top-1 differs:" in r.output
    assert not out.exists()


def test_verify_tolerance_is_enforced(rgb_model, shapes_test, tmp_path):
    test_dir, _ = shapes_test
    out = tmp_path / "v.onnx"
    args = ["export", str(rgb_model.with_suffix(".pt")), "-o", str(out), "--verify", str(test_dir)]
    r = runner.invoke(app, [*args, "--tolerance", "-1"])  # nothing can be within a negative tolerance
    assert r.exit_code == 1 and "tolerance -1" in r.output and not out.exists()


def test_verify_folder_errors(rgb_model, tmp_path):
    ckpt = str(rgb_model.with_suffix(".pt"))
    (tmp_path / "tree" / "not_a_class").mkdir(parents=True)
    r = runner.invoke(
        app, ["export", ckpt, "-o", str(tmp_path / "m.onnx"), "--verify", str(tmp_path / "tree")]
    )
    assert r.exit_code == 2 and "not_a_class" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(
        app, ["export", ckpt, "-o", str(tmp_path / "m.onnx"), "--verify", str(tmp_path / "empty")]
    )
    assert r.exit_code == 2 and "no image files" in r.output
    assert not (tmp_path / "m.onnx").exists()
