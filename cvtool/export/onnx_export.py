"""Checkpoint → self-describing ONNX file.

The graph takes `input` (N, C, H, W) float32 with a dynamic batch and returns `logits` (N, K);
the model card is stored as JSON under metadata_props["cvtool.card"]. The file is checked with
onnx.checker (full check) and run once through ONNX Runtime against PyTorch before it is kept.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from cvtool.atomic import atomic_write_bytes
from cvtool.contract import CARD_METADATA_KEY, ModelCard
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

__all__ = ["ExportError", "export_checkpoint", "attach_card"]

DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """Export failed or produced a graph that disagrees with PyTorch."""


def attach_card(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Set (or replace) the card entry in the model's metadata_props."""
    for prop in list(model.metadata_props):
        if prop.key == CARD_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, card.to_json()
    return model


def _torch_to_onnx(net: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(f),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                # Positional form: works whatever the forward argument is called.
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        return onnx.load(str(f))


def export_checkpoint(
    ckpt_path: str | os.PathLike, out_path: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> dict:
    """Export a cvtool checkpoint; returns a summary (path, card, max |Δprob| vs PyTorch)."""
    import onnxruntime as ort

    from cvtool.infer.session import softmax

    ckpt = load_checkpoint(ckpt_path)
    net, card = model_from_checkpoint(ckpt)
    c, (h, w) = card.channels, card.input_size
    # Trace with a batch of 2 so no size-1 specialisation sneaks into the graph.
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, h, w, generator=gen)
    try:
        model = _torch_to_onnx(net, example, opset)
    except Exception as e:  # the exporter raises a wide variety of errors
        raise ExportError(f"{ckpt_path}: ONNX export failed: {e}") from e
    attach_card(model, card)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()

    # Verify before writing: batch sizes 1 and 3 through ONNX Runtime equal PyTorch.
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    max_delta = 0.0
    for n in (1, 3):
        x = torch.randn(n, c, h, w, generator=gen)
        with torch.no_grad():
            ref = torch.softmax(net(x), dim=1).numpy()
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        max_delta = max(max_delta, float(np.abs(softmax(logits) - ref).max()))
    if max_delta > 1e-4:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch: max |Δprob| = {max_delta:.2e}")
    out_path = Path(out_path)
    atomic_write_bytes(out_path, data)
    return {"path": str(out_path), "card": card, "max_abs_prob_diff": max_delta, "opset": opset}
