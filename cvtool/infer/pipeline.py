"""Batched inference over image files: cvtool.decode's threaded decoding overlapping ONNX Runtime.

While the decoding threads prepare the next batches, ONNX Runtime (which releases the GIL) runs
the oldest ready one, or on the CPU several at once, one per lane (see OnnxModel.lanes: one
single-threaded session per core instead of one session whose threads all wait for the slowest
whenever a decoding thread takes a core). Files are taken from an iterator one batch at a time:
nothing requires the whole list of paths, let alone of images, in memory. A file that fails to
decode is recorded
with its reason; the run goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.decode import decoded
from cvtool.infer.ensemble import Ensemble
from cvtool.infer.session import OnnxModel
from cvtool.timing import StageTimes
from cvtool.tta import num_views

__all__ = [
    "Batch",
    "Predictions",
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
    times: StageTimes = field(default_factory=StageTimes)

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


def run_batches(
    model: OnnxModel | Ensemble,
    paths: Iterable[Path],
    batch_size: int = 32,
    workers: int | None = None,
    tta: str = "none",
    times: StageTimes | None = None,
) -> Iterator[Batch]:
    """Predict `paths` (any iterable, consumed lazily) batch by batch, in input order.

    `batch_size` is the number of tensors per model call; with test-time augmentation each image
    makes several, so a batch holds batch_size // views images. `times`, when given, gains the
    decoding, waiting and model seconds.
    """
    times = times if times is not None else StageTimes()
    ens = model if isinstance(model, Ensemble) else Ensemble([model])
    fixed = [m.fixed_batch for m in ens.models if m.fixed_batch]
    if fixed and batch_size % fixed[0]:
        batch_size = fixed[0]  # whole multiples of a fixed batch waste no padding
    per_batch = max(1, batch_size // num_views(tta))
    k = ens.num_classes
    lanes = ens.lanes
    times.model_lanes = lanes
    batches = decoded(paths, ens.cards, per_batch, workers, tta, times)
    if lanes == 1:
        for chunk, arrays, ok, failed in batches:
            probs, seconds = _predict(ens, arrays, ok, k, None)
            times.model += seconds
            yield Batch(paths=chunk, ok=ok, probs=probs, failed=failed)
        return
    # Several lanes: batch i runs on lane i % lanes, at most one batch per lane at a time (a new
    # batch is handed out only once the oldest is back, and batches come back in order).
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="cvtool-model") as pool:
        running: deque[tuple[list[Path], list[int], list[tuple[int, str]], Future]] = deque()
        for i, (chunk, arrays, ok, failed) in enumerate(batches):
            # The first batch runs on the main session: a one-batch run opens no lane.
            lane = None if i == 0 else i % lanes
            running.append((chunk, ok, failed, pool.submit(_predict, ens, arrays, ok, k, lane)))
            if len(running) == lanes:
                yield _finish(running.popleft(), times)
        while running:
            yield _finish(running.popleft(), times)


def _predict(ens: Ensemble, arrays: list[np.ndarray], ok: list[int], k: int, lane: int | None):
    """(probabilities, seconds in the model) for one decoded batch."""
    t0 = time.perf_counter()
    probs = ens.predict(arrays, lane) if ok else np.zeros((0, k), np.float32)
    return probs, time.perf_counter() - t0


def _finish(job: tuple[list[Path], list[int], list[tuple[int, str]], Future], times: StageTimes) -> Batch:
    chunk, ok, failed, fut = job
    probs, seconds = fut.result()
    times.model += seconds
    return Batch(paths=chunk, ok=ok, probs=probs, failed=failed)


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
    times = StageTimes()
    t0 = time.perf_counter()
    for b in run_batches(ens, paths, batch_size, workers, tta, times):
        if b.ok:
            out_probs.append(b.probs)
            out_paths.extend(b.paths[i] for i in b.ok)
        failed.update((b.paths[i], reason) for i, reason in b.failed)
        if on_progress:
            on_progress(len(b.paths))
    k = ens.num_classes
    times.total = time.perf_counter() - t0
    return Predictions(
        paths=out_paths,
        probs=np.concatenate(out_probs) if out_probs else np.zeros((0, k), np.float32),
        failed=failed,
        seconds=times.total,
        provider=ens.provider,
        times=times,
    )
