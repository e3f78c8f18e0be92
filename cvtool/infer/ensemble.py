"""Ensembles: several models, each fed through its own card's preprocessing, probabilities averaged.

The cards must name the same classes. When they list them in a different order, each model's
columns are reordered to the first model's order before averaging. Models whose preprocessing is
identical share one decoded input, so an ensemble of variants of one architecture decodes each
image once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.infer.session import OnnxModel

__all__ = ["Ensemble", "EnsembleError", "preprocessing_key"]

# Card fields that decide the input tensor; two cards equal on these produce identical inputs.
_PREPROCESSING_FIELDS = (
    "channels",
    "input_size",
    "resize",
    "crop_pct",
    "interpolation",
    "scale",
    "mean",
    "std",
    "jpeg_draft",
)


class EnsembleError(CvtoolError, ValueError):
    """Models cannot be combined; the message says which and why."""


def preprocessing_key(card: ModelCard) -> tuple:
    return tuple(getattr(card, f) for f in _PREPROCESSING_FIELDS)


@dataclass
class _Member:
    model: OnnxModel
    weight: float  # normalised: the weights sum to 1
    group: int  # index into Ensemble.cards: which preprocessed input this model takes
    columns: np.ndarray | None  # this model's column for each ensemble class; None = same order


class Ensemble:
    """One or more models whose (weighted) mean probability is the prediction."""

    def __init__(self, models: Sequence[OnnxModel], weights: Sequence[float] | None = None):
        if not models:
            raise EnsembleError("no model given")
        if weights is None:
            weights = [1.0] * len(models)
        if len(weights) != len(models):
            raise EnsembleError(f"{len(weights)} weight(s) given for {len(models)} model(s)")
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise EnsembleError(f"model weights must be ≥ 0 and not all 0, got {list(weights)}")
        first = models[0].card.class_names
        self.class_names: tuple[str, ...] = tuple(first)
        self.cards: list[ModelCard] = []  # one per distinct preprocessing
        keys: list[tuple] = []
        self.members: list[_Member] = []
        total = float(sum(weights))
        for m, w in zip(models, weights, strict=True):
            names = m.card.class_names
            columns = None
            if tuple(names) != self.class_names:
                if sorted(names) != sorted(self.class_names):
                    only_a = sorted(set(self.class_names) - set(names))[:5]
                    only_b = sorted(set(names) - set(self.class_names))[:5]
                    raise EnsembleError(
                        f"{m.path} and {models[0].path} name different classes "
                        f"(only in the first: {only_a}; only in {m.path.name}: {only_b})"
                    )
                index = {n: i for i, n in enumerate(names)}
                columns = np.array([index[n] for n in self.class_names])
            key = preprocessing_key(m.card)
            if key not in keys:
                keys.append(key)
                self.cards.append(m.card)
            self.members.append(_Member(m, w / total, keys.index(key), columns))

    @property
    def models(self) -> list[OnnxModel]:
        return [m.model for m in self.members]

    @property
    def card(self) -> ModelCard:
        """The first model's card (its class order is the ensemble's)."""
        return self.members[0].model.card

    @property
    def provider(self) -> str:
        return self.members[0].model.provider

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def retunable(self) -> bool:
        """Whether every model may run on a copy of its session with fewer threads."""
        return all(m.retunable for m in self.models)

    def predict(self, inputs: Sequence[np.ndarray], threads: int | None = None) -> np.ndarray:
        """inputs[g]: (n, V, C, H, W) views for preprocessing group g → (n, K) probabilities.

        Each model's probabilities are averaged over the V views (test-time augmentation), then
        over the models with their weights. `threads`: see OnnxModel.run.
        """
        n = len(inputs[0])
        out = np.zeros((n, self.num_classes), np.float64)
        for mem in self.members:
            x = inputs[mem.group]
            v = x.shape[1]
            p = mem.model.run(x.reshape(n * v, *x.shape[2:]), threads)  # (n·V, K)
            p = p.reshape(n, v, -1).mean(axis=1, dtype=np.float64)
            if mem.columns is not None:
                p = p[:, mem.columns]
            out += mem.weight * p.astype(np.float64)  # float64: a Python float times float32 stays float32
        return out.astype(np.float32)
