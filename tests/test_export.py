"""Checkpoint → ONNX: the card travels, batches are dynamic, ONNX Runtime equals PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, shape_image

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
