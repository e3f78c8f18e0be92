"""Batched inference over image files: threaded decoding overlapping ONNX Runtime.

A pool of decoding threads each turns a whole batch of files into arrays (Pillow and numpy
release the GIL while decoding, resizing and normalising), writing straight into the batch
buffer. At most `workers + 1` batches are decoded ahead of the model, so memory stays bounded
however many files there are, while ONNX Runtime (which also releases the GIL) runs the oldest
ready batch. Files are taken from an iterator one batch at a time: nothing requires the whole
list of paths, let alone of images, in memory.

A file that fails to decode is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_image
from cvtool.infer.ensemble import Ensemble
from cvtool.infer.session import OnnxModel
from cvtool.infer.tta import num_views, views_into

__all__ = [
    "Batch",
    "Predictions",
    "decode_batches",
    "decode_only",
    "default_workers",
    "predict_files",
    "run_batches",
]


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


@dataclass
class Batch:
    """One batch of input files and what became of them."""

    paths: list[Path]  # every file of the batch, in input order
    ok: list[int]  # positions in `paths` of the files that decoded; rows of `probs`
    probs: np.ndarray  # (len(ok), K) float32
    failed: list[tuple[int, str]]  # (position in `paths`, reason)


def default_workers() -> int:
    """Decoding threads: one per core, at most 8 (ONNX Runtime's own threads share the cores)."""
    return max(1, min(8, os.cpu_count() or 1))


def _decode_batch(
    paths: Sequence[Path], cards: Sequence[ModelCard], tta: str
) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]]]:
    """Decode files into one (n_ok, V, C, H, W) float32 array per card; runs in a worker thread."""
    v = num_views(tta)
    bufs = [np.empty((len(paths), v, c.channels, *c.input_size), np.float32) for c in cards]
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            row = len(ok)
            for buf, card in zip(bufs, cards, strict=True):
                views_into(load_image(p, card), card, tta, buf[row])
            ok.append(i)
        except ImageError as e:
            failed.append((i, e.reason))
    return [b[: len(ok)] for b in bufs], ok, failed


def _batched(items: Iterable[Path], n: int) -> Iterator[list[Path]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _decoded(
    paths: Iterable[Path], cards: Sequence[ModelCard], images_per_batch: int, workers: int, tta: str
) -> Iterator[tuple[list[Path], list[np.ndarray], list[int], list[tuple[int, str]]]]:
    """(paths, arrays per card, ok positions, failures) per batch, in input order, decoded ahead."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvtool-decode") as pool:
        pending: deque[tuple[list[Path], Future]] = deque()
        chunks = _batched(paths, images_per_batch)

        def fill() -> None:
            # One batch per worker being decoded, plus one ready and waiting for the model.
            while len(pending) < workers + 1:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                pending.append((chunk, pool.submit(_decode_batch, chunk, cards, tta)))

        fill()
        while pending:
            chunk, fut = pending.popleft()
            fill()
            yield chunk, *fut.result()


def run_batches(
    model: OnnxModel | Ensemble,
    paths: Iterable[Path],
    batch_size: int = 32,
    workers: int | None = None,
    tta: str = "none",
) -> Iterator[Batch]:
    """Predict `paths` (any iterable, consumed lazily) batch by batch, in input order.

    `batch_size` is the number of tensors per model call; with test-time augmentation each image
    makes several, so a batch holds batch_size // views images.
    """
    ens = model if isinstance(model, Ensemble) else Ensemble([model])
    fixed = [m.fixed_batch for m in ens.models if m.fixed_batch]
    if fixed and batch_size % fixed[0]:
        batch_size = fixed[0]  # whole multiples of a fixed batch waste no padding
    per_batch = max(1, batch_size // num_views(tta))
    workers = workers or default_workers()
    k = ens.num_classes
    for chunk, arrays, ok, failed in _decoded(paths, ens.cards, per_batch, workers, tta):
        probs = ens.predict(arrays) if ok else np.zeros((0, k), np.float32)
        yield Batch(paths=chunk, ok=ok, probs=probs, failed=failed)


def predict_files(
    model: OnnxModel | Ensemble,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    *,
    tta: str = "none",
) -> Predictions:
    """Run the model over `paths`; failures are collected, never raised."""
    out_paths: list[Path] = []
    out_probs: list[np.ndarray] = []
    failed: dict[Path, str] = {}
    ens = model if isinstance(model, Ensemble) else Ensemble([model])
    t0 = time.perf_counter()
    for b in run_batches(ens, paths, batch_size, workers, tta):
        if b.ok:
            out_probs.append(b.probs)
            out_paths.extend(b.paths[i] for i in b.ok)
        failed.update((b.paths[i], reason) for i, reason in b.failed)
        if on_progress:
            on_progress(len(b.paths))
    k = ens.num_classes
    return Predictions(
        paths=out_paths,
        probs=np.concatenate(out_probs) if out_probs else np.zeros((0, k), np.float32),
        failed=failed,
        seconds=time.perf_counter() - t0,
        provider=ens.provider,
    )


def decode_batches(
    paths: Sequence[Path], card: ModelCard, batch_size: int, workers: int | None = None
) -> Iterator[tuple[list[Path], np.ndarray, dict[Path, str]]]:
    """Yield (decoded paths, (n, C, H, W) float32 batch, {failed path: reason}) in input order."""
    for chunk, (arr,), ok, failed in _decoded(
        paths, [card], batch_size, workers or default_workers(), "none"
    ):
        yield [chunk[i] for i in ok], arr[:, 0], {chunk[i]: r for i, r in failed}


def decode_only(
    paths: Iterable[Path], cards: Sequence[ModelCard], batch_size: int = 32, workers: int | None = None
) -> int:
    """Decode and preprocess `paths` as the pipeline does, without a model; returns the file count.

    The floor for small images, where decoding rather than the model limits the speed
    (bench/predict_speed.py compares the two).
    """
    n = 0
    for chunk, *_ in _decoded(paths, cards, batch_size, workers or default_workers(), "none"):
        n += len(chunk)
    return n
