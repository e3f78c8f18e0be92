"""Batched inference over image files: cvtool.decode's threaded decoding overlapping ONNX Runtime.

While the decoding threads prepare the next batches, ONNX Runtime (which releases the GIL) runs
the oldest ready one. On the CPU, the first batches' costs decide whether the model keeps a
thread per core or leaves one core to decoding (`model_threads`). Files are taken from an
iterator one batch at a time: nothing requires the whole list of paths, let alone of images, in
memory. A file that fails to decode is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.decode import decoded, usable_cores
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
    retune = ens.retunable and usable_cores() >= 2
    threads: int | None = None  # None: each model's own session; else a copy with this many
    # Retuning: the first three batches are decoded and run alone; the first two calls warm the
    # session up, the third is timed against the decoding.
    batches = decoded(paths, ens.cards, per_batch, workers, tta, times, alone=3 if retune else 1)
    for i, (chunk, arrays, ok, failed) in enumerate(batches):
        t0 = time.perf_counter()
        probs = ens.predict(arrays, threads) if ok else np.zeros((0, k), np.float32)
        seconds = time.perf_counter() - t0
        times.model += seconds
        if retune and i == 2 and ok:
            cores = usable_cores()
            # A call of a few milliseconds varies by half from call to call: time it again, the
            # fastest is the model's cost (the probabilities are the first call's).
            for _ in range(4 if seconds < 0.02 else 0):
                t0 = time.perf_counter()
                ens.predict(arrays, threads)
                seconds = min(seconds, time.perf_counter() - t0)
            choice = model_threads(times.decode_cpu / times.images, seconds * cores / len(ok), cores)
            threads = choice if choice < cores else None
            times.model_threads = choice
        yield Batch(paths=chunk, ok=ok, probs=probs, failed=failed)


# A decoding thread that takes one of ONNX Runtime's cores stalls all of its threads at every
# operator (each waits for the slowest). Decoding gets a core of its own, and the model one
# thread fewer, once it needs most of a core. Measured on 2 cores (bench/RESULTS.md): decoding
# 28×28 PNGs for the demo model needs 0.8-1.0 cores, and they ran 7,100-8,100 images/s with one
# model thread against 5,700-7,200 with two; ResNet-18 INT8 on 500×375 JPEGs needs 0.45-0.67
# cores and ran 173 images/s with two threads against 132 with one. The copy of the session
# with fewer threads stays open for the model's life, so its weights are then held twice.
DECODE_CORE_SHARE = 0.7


def model_threads(decode_per_file: float, model_per_image: float, cores: int) -> int:
    """ONNX Runtime threads for the rest of a run on `cores` cores, from the first batches' costs.

    `decode_per_file`: decoding's CPU seconds per file; `model_per_image`: the model's core
    seconds per image (its wall seconds times the threads it ran on). The cores are shared in
    proportion to the two costs; decoding's share, rounded up from DECODE_CORE_SHARE of a core,
    is taken from the model.
    """
    if decode_per_file <= 0 or model_per_image <= 0:
        return cores
    decode_cores = cores * decode_per_file / (decode_per_file + model_per_image)
    return max(1, cores - int(decode_cores + 1 - DECODE_CORE_SHARE))


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
