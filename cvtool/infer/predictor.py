"""`Predictor`: the Python API for predicting with cvtool models, in a notebook or a pipeline.

It opens the model(s) once and predicts from file paths, PIL images or uint8 arrays, always
through the card's own preprocessing (the same functions `cvtool predict` runs), so a notebook,
a Ray Data pipeline and the command line give the same probabilities for the same images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.images import to_channels
from cvtool.infer.ensemble import Ensemble
from cvtool.infer.pipeline import run_batches
from cvtool.infer.session import Device, OnnxModel, default_batch_size, open_model
from cvtool.tta import TtaMode, num_views, views_into

__all__ = ["Prediction", "Predictor"]

PathLike = str | os.PathLike
# What predict() takes: one of these, a sequence of them, or an (N, H, W, C) uint8 batch.
ImageLike = PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """Probabilities and labels, one row per input, in input order.

    A file that cannot be read keeps its row: probabilities NaN, label None, and its reason in
    `failed` (input position → reason), so rows never shift against the inputs.
    """

    probs: np.ndarray  # (N, K) float32
    labels: list[str | None]
    class_names: tuple[str, ...]
    failed: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def indices(self) -> np.ndarray:
        """(N,) int64 class index per row (-1 for failed rows)."""
        out = np.full(len(self.labels), -1, np.int64)
        ok = ~np.isnan(self.probs).any(axis=1)
        out[ok] = self.probs[ok].argmax(axis=1)
        return out


def _as_image(x: Image.Image | np.ndarray, card: ModelCard) -> Image.Image:
    """A PIL image or a uint8 (H, W), (H, W, 1|3|4) array → a PIL image in the card's channels."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise CvtoolError(f"arrays must be uint8 pixels (0-255), got {x.dtype}")
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (3, 4)):
            raise CvtoolError(f"an image array is (H, W) or (H, W, 1|3|4), got shape {x.shape}")
        x = Image.fromarray(x)
    return to_channels(x, card.channels)


def _items(inputs: ImageLike | Sequence[ImageLike]) -> list[Any]:
    if isinstance(inputs, np.ndarray):
        # (N, H, W, C), or images of different sizes in an object array (Ray's ragged batches).
        return list(inputs) if inputs.ndim == 4 or inputs.dtype == object else [inputs]
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        return [inputs]
    return list(inputs)


class Predictor:
    """One model, or an ensemble of models, loaded once.

    >>> p = Predictor("model.onnx")
    >>> p.predict(["a.png", "b.png"]).labels
    ['cat', 'dog']
    """

    def __init__(
        self,
        model: PathLike | Sequence[PathLike],
        device: Device = "auto",
        *,
        weights: Sequence[float] | None = None,
        overrides: Mapping[str, Any] | None = None,
        tta: TtaMode = "none",
        batch_size: int | None = None,
        workers: int | None = None,
        threads: int | None = None,
    ):
        paths = [model] if isinstance(model, (str, os.PathLike)) else list(model)
        # TensorRT sizes its engine for the largest batch: it needs the batch size up front.
        trt_batch = batch_size or default_batch_size("TensorrtExecutionProvider")
        models = [open_model(p, device, overrides, threads, batch_size=trt_batch) for p in paths]
        self.ensemble = Ensemble(models, weights)
        self.tta: TtaMode = tta
        self.batch_size = batch_size or default_batch_size(self.ensemble.provider)
        self.workers = workers

    @property
    def models(self) -> list[OnnxModel]:
        return self.ensemble.models

    @property
    def card(self) -> ModelCard:
        """The (first) model's resolved card: its classes are the prediction's columns."""
        return self.ensemble.card

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.ensemble.class_names

    @property
    def provider(self) -> str:
        return self.ensemble.provider

    def predict(self, inputs: ImageLike | Sequence[ImageLike]) -> Prediction:
        """Predict files (decoded by a pool of threads), PIL images or uint8 arrays.

        Arrays are uint8 pixels as a file would decode to: (H, W, 3) RGB, (H, W, 4) RGBA, (H, W)
        or (H, W, 1) gray; an (N, H, W, C) array is N images.
        """
        items = _items(inputs)
        k = self.ensemble.num_classes
        probs = np.full((len(items), k), np.nan, np.float32)
        failed: dict[int, str] = {}
        files = [i for i, x in enumerate(items) if isinstance(x, (str, os.PathLike))]
        if files:
            done = 0
            paths = (Path(items[i]) for i in files)
            for b in run_batches(self.ensemble, paths, self.batch_size, self.workers, self.tta):
                rows = [files[done + j] for j in range(len(b.paths))]
                probs[[rows[j] for j in b.ok]] = b.probs
                failed.update((rows[j], reason) for j, reason in b.failed)
                done += len(b.paths)
        on_disk = set(files)
        in_memory = [i for i in range(len(items)) if i not in on_disk]
        per_call = max(1, self.batch_size // num_views(self.tta))
        for start in range(0, len(in_memory), per_call):
            rows = in_memory[start : start + per_call]
            probs[rows] = self._predict_images([items[i] for i in rows])
        names = self.class_names
        labels = [None if i in failed else names[int(probs[i].argmax())] for i in range(len(items))]
        return Prediction(probs=probs, labels=labels, class_names=self.class_names, failed=failed)

    __call__ = predict

    def _predict_images(self, images: Iterable[Image.Image | np.ndarray]) -> np.ndarray:
        images = list(images)
        v = num_views(self.tta)
        inputs = []
        for card in self.ensemble.cards:  # one decoded input per distinct preprocessing
            buf = np.empty((len(images), v, card.channels, *card.input_size), np.float32)
            for row, x in enumerate(images):
                views_into(_as_image(x, card), card, self.tta, buf[row])
            inputs.append(buf)
        return self.ensemble.predict(inputs)
