"""Decoding image files into batches for a model: a pool of threads, a bounded look-ahead.

Each decoding thread turns a whole batch of files into arrays (Pillow and numpy release the GIL
while decoding, resizing and normalising), writing straight into the batch buffer. At most
`workers + 1` batches are decoded ahead of the consumer, so memory stays bounded however many
files there are, while the consumer (ONNX Runtime, which also releases the GIL; or calibration)
works on the oldest ready batch. Files are taken from an iterator one batch at a time.

A file that fails to decode is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_image
from cvtool.timing import StageTimes
from cvtool.tta import num_views, views_into

__all__ = ["decode_batches", "decode_only", "decoded", "default_workers"]

# (paths, arrays per card, positions of the files that decoded, (position, reason) per failure)
Decoded = tuple[list[Path], list[np.ndarray], list[int], list[tuple[int, str]]]


def default_workers() -> int:
    """Decoding threads: one per core, at most 8 (ONNX Runtime's own threads share the cores)."""
    return max(1, min(8, os.cpu_count() or 1))


def _decode_batch(
    paths: Sequence[Path], cards: Sequence[ModelCard], tta: str
) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]], float, float]:
    """Decode files into one (n_ok, V, C, H, W) float32 array per card; runs in a worker thread.

    Also returns the task's CPU and wall seconds (for StageTimes).
    """
    cpu0, wall0 = time.thread_time(), time.perf_counter()
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
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return [b[: len(ok)] for b in bufs], ok, failed, cpu, wall


def _batched(items: Iterable[Path], n: int) -> Iterator[list[Path]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def decoded(
    paths: Iterable[Path],
    cards: Sequence[ModelCard],
    images_per_batch: int,
    workers: int,
    tta: str,
    times: StageTimes | None = None,
) -> Iterator[Decoded]:
    """(paths, arrays per card, ok positions, failures) per batch, in input order, decoded ahead.

    `times` (when given) gains the decoding's CPU and wall seconds and the consumer's waiting.
    """
    times = times if times is not None else StageTimes()
    times.decode_threads = workers
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
            t0 = time.perf_counter()
            arrays, ok, failed, cpu, wall = fut.result()
            times.waiting += time.perf_counter() - t0
            times.decode_cpu += cpu
            times.decode_wall += wall
            times.images += len(chunk)
            yield chunk, arrays, ok, failed


def decode_batches(
    paths: Sequence[Path], card: ModelCard, batch_size: int, workers: int | None = None
) -> Iterator[tuple[list[Path], np.ndarray, dict[Path, str]]]:
    """Yield (decoded paths, (n, C, H, W) float32 batch, {failed path: reason}) in input order."""
    for chunk, (arr,), ok, failed in decoded(paths, [card], batch_size, workers or default_workers(), "none"):
        yield [chunk[i] for i in ok], arr[:, 0], {chunk[i]: r for i, r in failed}


def decode_only(
    paths: Iterable[Path],
    cards: Sequence[ModelCard],
    batch_size: int = 32,
    workers: int | None = None,
    times: StageTimes | None = None,
) -> int:
    """Decode and preprocess `paths` as the pipeline does, without a model; returns the file count.

    The floor for small images, where decoding rather than the model limits the speed
    (bench/predict_speed.py compares the two).
    """
    n = 0
    for chunk, *_ in decoded(paths, cards, batch_size, workers or default_workers(), "none", times):
        n += len(chunk)
    return n
