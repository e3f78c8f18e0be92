"""Faithfulness of a saliency map: deletion and insertion AUC (Petsiuk et al., RISE, 2018).

Pixels of the model input are ranked by the map, most important first. *Deletion* sets the top
fraction of them to the baseline (what occlusion shows: the mean colour, black or a blur) and
watches p(target) fall; *insertion* starts from the baseline image and puts the top pixels back,
watching p(target) rise. Each curve has `steps` + 1 points at the fractions 0, 1/steps, …, 1;
its area (trapezoid rule over the fraction of pixels) is the score: a map that finds what the
model relies on has a low deletion AUC and a high insertion AUC. A random map (seeded) is scored
the same way on the same image, as the reference a map must beat.

All the step images of one map and of its random reference go through ONNX Runtime together, in
one or two batches. Deletion's first and last images are insertion's last and first (the image
and the baseline), so each is run once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cvtool.errors import CvtoolError

__all__ = [
    "DEFAULT_STEPS",
    "FAITHFULNESS_CSV_HEADER",
    "Curves",
    "Faithfulness",
    "FaithfulnessError",
    "FaithfulnessSettings",
    "auc",
    "faithfulness",
    "mean_scores",
    "random_saliency",
    "ranking",
]

DEFAULT_STEPS = 20
FAITHFULNESS_CSV_HEADER = ["deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"]


class FaithfulnessError(CvtoolError, ValueError):
    """Faithfulness settings or inputs that cannot work (no steps, a map of the wrong size)."""


@dataclass(frozen=True)
class FaithfulnessSettings:
    """How maps are scored: the number of deletion / insertion steps and the random map's seed."""

    steps: int = DEFAULT_STEPS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise FaithfulnessError(f"faithfulness steps must be at least 1, got {self.steps}")


def auc(values: Sequence[float] | np.ndarray, fractions: Sequence[float] | np.ndarray | None = None) -> float:
    """Area under values(fraction) by the trapezoid rule; fractions default to an even grid on [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    f = np.linspace(0.0, 1.0, len(v)) if fractions is None else np.asarray(fractions, dtype=np.float64)
    if len(v) < 2 or len(f) != len(v):
        raise ValueError(f"need two or more values on as many fractions, got {len(v)} and {len(f)}")
    return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2)


def ranking(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values keep raster order (deterministic)."""
    return np.argsort(-np.asarray(saliency, dtype=np.float64).ravel(), kind="stable")


def random_saliency(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random (H, W) map, the reference every map is compared with (the same for a given seed)."""
    return np.random.default_rng(seed).random(size)


@dataclass(frozen=True)
class Curves:
    """p(target) as the top pixels of a map are deleted, and as they are inserted."""

    fractions: np.ndarray  # (steps + 1,) fraction of the pixels deleted / inserted
    deletion: np.ndarray  # (steps + 1,) p(target) with that fraction set to the baseline
    insertion: np.ndarray  # (steps + 1,) p(target) of the baseline with that fraction put back

    @property
    def deletion_auc(self) -> float:
        return auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> float:
        return auc(self.insertion, self.fractions)


@dataclass(frozen=True)
class Faithfulness:
    """A map's deletion and insertion curves next to those of a random map on the same image."""

    saliency: Curves
    random: Curves
    baseline: str  # what deleted pixels show (occlusion's baselines)

    @property
    def steps(self) -> int:
        return len(self.saliency.fractions) - 1

    def csv_cells(self) -> list[str]:
        """Its values for FAITHFULNESS_CSV_HEADER."""
        s, r = self.saliency, self.random
        return [f"{v:.6f}" for v in (s.deletion_auc, s.insertion_auc, r.deletion_auc, r.insertion_auc)]

    def describe(self) -> str:
        s, r = self.saliency, self.random
        return (
            f"deletion AUC {s.deletion_auc:.3f} (random {r.deletion_auc:.3f}), "
            f"insertion AUC {s.insertion_auc:.3f} (random {r.insertion_auc:.3f})"
        )


def _counts(pixels: int, steps: int) -> np.ndarray:
    """How many pixels are deleted / inserted at each step: round(i · pixels / steps), i = 0 … steps."""
    return np.rint(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def faithfulness(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    saliency: np.ndarray,
    baseline: np.ndarray | float,
    target: int,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = 64,
    baseline_name: str = "mean",
) -> Faithfulness:
    """Deletion and insertion curves of `saliency` (H, W) and of a random map, for class `target`.

    `run` maps an (N, C, H, W) float32 batch to (N, K) probabilities; `x` is the (C, H, W) input and
    `baseline` what a deleted pixel shows (broadcastable to `x`).
    """
    if steps < 1:
        raise FaithfulnessError(f"faithfulness steps must be at least 1, got {steps}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    c, h, w = x.shape
    if saliency.shape != (h, w):
        raise FaithfulnessError(f"saliency map {saliency.shape} does not match the input {h}×{w}")
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape)
    counts = _counts(h * w, steps)
    # rank[p]: where pixel p comes in a map's order; a step deletes the pixels with rank < count.
    ranks = []
    for s in (saliency, random_saliency((h, w), seed)):
        rank = np.empty(h * w, np.int64)
        rank[ranking(s)] = np.arange(h * w)
        ranks.append(rank.reshape(h, w))
    # Images to run: for each map, deletion at every step, insertion at the inner steps.
    specs = [(m, "deletion", i) for m in range(2) for i in range(steps + 1)]
    specs += [(m, "insertion", i) for m in range(2) for i in range(1, steps)]
    probs = np.empty(len(specs), np.float32)
    step = math.ceil(len(specs) / math.ceil(len(specs) / batch_size))  # equal batches
    for start in range(0, len(specs), step):
        chunk = specs[start : start + step]
        batch = np.empty((len(chunk), c, h, w), np.float32)
        for b, (m, kind, i) in enumerate(chunk):
            top = ranks[m] < counts[i]
            batch[b] = np.where(top, base, x) if kind == "deletion" else np.where(top, x, base)
        probs[start : start + len(chunk)] = run(batch)[:, target]
    got = dict(zip(specs, probs.tolist(), strict=True))
    fractions = counts / (h * w)
    curves = []
    for m in range(2):
        deletion = np.array([got[(m, "deletion", i)] for i in range(steps + 1)])
        inner = [got[(m, "insertion", i)] for i in range(1, steps)]
        # Inserting nothing is deleting everything, and inserting everything is the image itself.
        insertion = np.array([deletion[-1], *inner, deletion[0]])
        curves.append(Curves(fractions, deletion, insertion))
    return Faithfulness(curves[0], curves[1], baseline_name)


def mean_scores(items: Sequence[Faithfulness]) -> dict[str, float]:
    """Mean of each CSV score over maps (empty: {}), keyed as FAITHFULNESS_CSV_HEADER."""
    if not items:
        return {}
    table = np.array([[float(v) for v in f.csv_cells()] for f in items])
    return {k: round(float(v), 6) for k, v in zip(FAITHFULNESS_CSV_HEADER, table.mean(axis=0), strict=True)}
