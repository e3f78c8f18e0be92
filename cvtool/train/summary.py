"""The PyTorch side of `cvtool summary`: a checkpoint's network, run once on a zero batch.

Rows are the leaf modules in definition order; output shapes come from forward hooks; a row's
parameters are the module's own (not its children's), so the rows add up to the total.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from pathlib import Path

import torch
from torch import nn

from cvtool.onnxtools.summary import LayerRow, Summary
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

__all__ = ["checkpoint_summary", "module_summary"]


def module_summary(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    frozen: AbstractSet[str] = frozenset(),
    source: str = "",
) -> Summary:
    """Summary of `model` for (C, H, W) inputs; parameters named in `frozen` count as non-trainable."""
    shapes: dict[str, tuple] = {}
    hooks = []
    # Leaf modules, plus any container holding parameters of its own (rare, e.g. a class token).
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if name and (not list(m.children()) or list(m.parameters(recurse=False)))
    ]
    for name, m in layers:

        def hook(_m, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                shapes[name] = ("batch", *output.shape[1:])

        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))  # batch 2: batch-norm in train mode would need > 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    summary = Summary(source=source, input_shape=("batch", *input_shape))
    for name, m in layers:
        own = list(m.named_parameters(prefix=name, recurse=False))
        n = sum(p.numel() for _, p in own)
        trainable = None if not own else not any(pname in frozen for pname, _ in own)
        summary.rows.append(LayerRow(name, type(m).__name__, shapes.get(name), n, trainable))
    summary.total = sum(p.numel() for p in model.parameters())
    summary.trainable = sum(p.numel() for name, p in model.named_parameters() if name not in frozen)
    return summary


def checkpoint_summary(path: str | os.PathLike) -> Summary:
    """Summary of a cvtool checkpoint; "trainable" is as the run left it (e.g. a frozen backbone)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    model, card = model_from_checkpoint(ckpt)
    frozen = set(ckpt.get("frozen", []))
    summary = module_summary(model, (card.channels, *card.input_size), frozen, str(path))
    summary.notes.append(f"arch {ckpt['arch']}, epoch {ckpt.get('epoch', '?')}, {card.num_classes} classes")
    return summary
