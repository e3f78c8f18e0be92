"""A checkpoint's logits on image files, in PyTorch: for out-of-fold predictions and calibration.

The images go through the card's one preprocessing (cvtool.images), as validation saw them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cvtool.images import ImageError, load_and_preprocess
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

__all__ = ["checkpoint_logits"]


def checkpoint_logits(
    ckpt_path: Path, paths: list[Path], device: torch.device
) -> tuple[list[int], np.ndarray]:
    """(positions of `paths` that decoded, their (n, K) logits) from the checkpoint, in eval mode."""
    model, card = model_from_checkpoint(load_checkpoint(ckpt_path))
    model.to(device)
    ok: list[int] = []
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                x = torch.from_numpy(np.stack(batch)).to(device)
                out.append(model(x).float().cpu().numpy())
            batch.clear()

    for i, p in enumerate(paths):
        try:
            batch.append(load_and_preprocess(p, card))  # the preprocessing validation used
        except ImageError:
            continue  # training skipped it too, and said so
        ok.append(i)
        if len(batch) == 64:
            flush()
    flush()
    k = card.num_classes
    return ok, np.concatenate(out) if out else np.zeros((0, k), np.float32)
