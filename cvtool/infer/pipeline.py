"""Batched inference over image files: threaded decoding overlapping ONNX Runtime.

Pillow releases the GIL while decoding and resizing, so a small thread pool keeps batches ready
while the model runs on the previous one. Lookahead is bounded, so memory does not grow with the
folder. A file that fails to decode is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_and_preprocess
from cvtool.infer.session import OnnxModel

__all__ = ["Predictions", "decode_batches", "predict_files"]


@dataclass
class Predictions:
    """Probabilities for the files that decoded, and reasons for those that did not."""

    paths: list[Path]  # files that were predicted, in input order
    probs: np.ndarray  # (N, K) float32, rows match `paths`
    failed: dict[Path, str] = field(default_factory=dict)  # file → reason
    seconds: float = 0.0
    provider: str = ""

    @property
    def images_per_second(self) -> float:
        n = len(self.paths) + len(self.failed)
        return n / self.seconds if self.seconds > 0 else 0.0


def _decode(path: Path, card: ModelCard) -> np.ndarray | ImageError:
    try:
        return load_and_preprocess(path, card)
    except ImageError as e:
        return e


def decode_batches(
    paths: Sequence[Path], card: ModelCard, batch_size: int, workers: int | None = None
) -> Iterator[tuple[list[Path], np.ndarray, dict[Path, str]]]:
    """Yield (paths, (n, C, H, W) float32 batch, {failed path: reason}) in input order."""
    workers = workers or min(8, os.cpu_count() or 1)
    window = batch_size * 2 + workers  # at most this many decoded images held at once
    c = card.channels
    h, w = card.input_size
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Path, Future]] = deque()
        it = iter(paths)
        done_batch: list[tuple[Path, np.ndarray]] = []
        failed: dict[Path, str] = {}

        def fill() -> None:
            while len(pending) < window:
                p = next(it, None)
                if p is None:
                    return
                pending.append((p, pool.submit(_decode, p, card)))

        fill()
        while pending:
            p, fut = pending.popleft()
            fill()
            result = fut.result()
            if isinstance(result, ImageError):
                failed[p] = result.reason
            else:
                done_batch.append((p, result))
            if len(done_batch) == batch_size or (not pending and (done_batch or failed)):
                batch = np.empty((len(done_batch), c, h, w), dtype=np.float32)
                for i, (_, a) in enumerate(done_batch):
                    batch[i] = a
                yield [q for q, _ in done_batch], batch, failed
                done_batch, failed = [], {}


def predict_files(
    model: OnnxModel,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Run the model over `paths`; failures are collected, never raised."""
    if model.fixed_batch is not None:
        batch_size = model.fixed_batch if batch_size % model.fixed_batch else batch_size
    out_paths: list[Path] = []
    out_probs: list[np.ndarray] = []
    failed: dict[Path, str] = {}
    t0 = time.perf_counter()
    for batch_paths, batch, batch_failed in decode_batches(paths, model.card, batch_size, workers):
        if len(batch):
            out_probs.append(model.run(batch))
            out_paths.extend(batch_paths)
        failed.update(batch_failed)
        if on_progress:
            on_progress(len(batch_paths) + len(batch_failed))
    k = model.card.num_classes
    return Predictions(
        paths=out_paths,
        probs=np.concatenate(out_probs) if out_probs else np.zeros((0, k), np.float32),
        failed=failed,
        seconds=time.perf_counter() - t0,
        provider=model.provider,
    )
