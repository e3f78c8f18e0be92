"""PyTorch vs ONNX Runtime on real image files, through the shared preprocessing.

`cvtool export --verify DIR` decodes DIR's images once with the card's preprocessing
(`cvtool.images`, the same code predict runs) and feeds the same batches to the PyTorch network
and to the exported file, so a difference can only come from the export.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cvtool.contract import ModelCard
from cvtool.export.onnx_export import ExportError
from cvtool.infer.compare import Comparison, ProbFn, compare_predictions

if TYPE_CHECKING:
    from cvtool.export.onnx_export import ExportResult

__all__ = ["VerifyError", "torch_probs", "verify_against_torch"]


class VerifyError(ExportError):
    """The exported graph disagrees with PyTorch on the verification images; nothing was written.

    `result` holds what export_checkpoint measured, `result.verify` the Comparison. Exit code 1:
    the input was usable, the export is what failed.
    """

    exit_code = 1

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


def torch_probs(net: torch.nn.Module, temperature: float = 1.0) -> ProbFn:
    """(N, C, H, W) float32 numpy → (N, K) softmax(logits / temperature) from `net` in eval mode."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(x)).float() / temperature, dim=1).numpy()

    return run


def verify_against_torch(
    net: torch.nn.Module,
    onnx_path: str | os.PathLike,
    card: ModelCard,
    files: Sequence[Path],
    labels: Sequence[int] | None = None,
) -> Comparison:
    """Compare `net` (reference) with the ONNX file (candidate) on `files`."""
    from cvtool.infer.session import open_model

    model = open_model(onnx_path, device="cpu")
    # The file's probabilities are the deployed ones, a calibrated card's temperature applied.
    reference = torch_probs(net.eval(), card.temperature)
    return compare_predictions(files, card, reference, model.run, labels)
