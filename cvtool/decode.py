"""Decoding image files into batches for a model: a pool of threads, a bounded look-ahead.

Each decoding thread turns a whole batch of files into arrays (Pillow and numpy release the GIL
while decoding, resizing and normalising), writing straight into the batch buffer. At most one
batch more than there are threads is decoded ahead of the consumer, so memory stays bounded
however many files there are, while the consumer (ONNX Runtime, which also releases the GIL; or
calibration) works on the oldest ready batch. Files are taken from an iterator one batch at a
time. How many threads help depends on the files: see `threads_for`.

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

__all__ = ["decode_batches", "decode_only", "decoded", "default_workers", "threads_for", "usable_cores"]

# (paths, arrays per card, positions of the files that decoded, (position, reason) per failure)
Decoded = tuple[list[Path], list[np.ndarray], list[int], list[tuple[int, str]]]


def default_workers() -> int:
    """The most decoding threads: one per core this process may run on, at most 8."""
    return max(1, min(8, usable_cores()))


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))  # what taskset, cgroups' cpusets and SLURM allow
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Python's own work per file (open, parse headers, the calls around the decoders) holds the GIL:
# about 0.1 ms here (a 28×28 PNG costs 0.1 ms in all), while the decoders and resizers release
# it. A second thread only helps when most of a file's time is spent outside the GIL: two threads
# decoded 28×28 PNGs at 4,400/s against one thread's 7,950/s (they fight over the GIL), but
# 500×375 JPEGs (about 3 ms each) at 660/s against 350/s (bench/RESULTS.md, 2-core Xeon).
GIL_SECONDS_PER_FILE = 0.25e-3


def threads_for(cpu_per_file: float, most: int) -> int:
    """Decoding threads worth running for files that cost `cpu_per_file` CPU seconds each."""
    return max(1, min(most, int(cpu_per_file / GIL_SECONDS_PER_FILE)))


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
    workers: int | None,
    tta: str,
    times: StageTimes | None = None,
    alone: int = 1,
) -> Iterator[Decoded]:
    """(paths, arrays per card, ok positions, failures) per batch, in input order, decoded ahead.

    `workers`: decoding threads; None decodes the first batch in the calling thread and sizes
    the pool from its CPU time per file (`threads_for`), up to `default_workers()`.
    `alone`: the first `alone` batches are decoded one at a time and nothing is decoded while the
    consumer holds them, so that both stages can be timed without the other (the pipeline times
    the model on them). `times` (when given) gains the decoding's CPU and wall seconds and the
    consumer's waiting.
    """
    times = times if times is not None else StageTimes()
    chunks = _batched(paths, images_per_batch)
    first = None
    if workers is None:  # decode the first batch here, alone, and size the pool from its cost
        chunk = next(chunks, None)
        if chunk is None:
            return
        t0 = time.perf_counter()
        first = (chunk, _decode_batch(chunk, cards, tta))
        times.waiting += time.perf_counter() - t0
        workers = threads_for(first[1][3] / len(chunk), default_workers())
    times.decode_threads = workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvtool-decode") as pool:
        pending: deque[tuple[list[Path], Future]] = deque()
        served = 0  # batches handed to the consumer

        def fill() -> None:
            # One batch per thread being decoded, plus one ready and waiting for the model.
            while len(pending) < (1 if served < alone else workers + 1):
                chunk = next(chunks, None)
                if chunk is None:
                    return
                pending.append((chunk, pool.submit(_decode_batch, chunk, cards, tta)))

        if first is None:
            fill()
        while first is not None or pending:
            if first is not None:
                (chunk, (arrays, ok, failed, cpu, wall)), first = first, None
            else:
                chunk, fut = pending.popleft()
                t0 = time.perf_counter()
                arrays, ok, failed, cpu, wall = fut.result()
                times.waiting += time.perf_counter() - t0
            served += 1
            if served > alone:
                fill()
            times.decode_cpu += cpu
            times.decode_wall += wall
            times.images += len(chunk)
            yield chunk, arrays, ok, failed
            fill()


def decode_batches(
    paths: Sequence[Path], card: ModelCard, batch_size: int, workers: int | None = None
) -> Iterator[tuple[list[Path], np.ndarray, dict[Path, str]]]:
    """Yield (decoded paths, (n, C, H, W) float32 batch, {failed path: reason}) in input order."""
    for chunk, (arr,), ok, failed in decoded(paths, [card], batch_size, workers, "none"):
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
    for chunk, *_ in decoded(paths, cards, batch_size, workers, "none", times):
        n += len(chunk)
    return n
