"""cvtool: train image classifiers, export self-describing ONNX, predict and evaluate without torch.

The Python API (torch-free; each name is imported on first use, so `import cvtool` stays fast):

    from cvtool import Predictor, ModelCard, evaluate

    p = Predictor("model.onnx")                 # or a list of files: an ensemble
    pred = p.predict(["a.png", "b.jpg"])        # paths, PIL images or uint8 (N, H, W, C) arrays
    pred.probs, pred.labels                     # (N, K) float32, class names
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ModelCard", "Prediction", "Predictor", "__version__", "evaluate"]

_LAZY = {
    "ModelCard": "cvtool.contract",
    "Prediction": "cvtool.infer.predictor",
    "Predictor": "cvtool.infer.predictor",
    "evaluate": "cvtool.evaluation.run",
}

if TYPE_CHECKING:
    from cvtool.contract import ModelCard
    from cvtool.evaluation.run import evaluate
    from cvtool.infer.predictor import Prediction, Predictor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module 'cvtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
