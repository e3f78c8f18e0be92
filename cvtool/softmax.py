"""Logits to probabilities, in numpy: what every consumer of a model's output shares."""

from __future__ import annotations

import numpy as np

__all__ = ["softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable (max subtracted). (N, K) → (N, K) float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
