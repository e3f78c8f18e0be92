"""Two models side by side on real image files, and throughput at a fixed batch.

Used to check an export against PyTorch (`cvtool export --verify`) and a reduced-precision file
against its float32 original (`cvtool export --fp16/--int8 --verify`, `cvtool quantize --verify
--bench`: both through `compare_files` and `compare_speed`). Both models see the same decoded,
preprocessed batches (the card's one preprocessing, `cvtool.images`), so any difference is the
model's. A model here is any function (N, C, H, W) float32 → (N, K) probabilities.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.contract import ModelCard
from cvtool.data import DataError, LabelSource, labeled_files, list_images
from cvtool.decode import decode_batches
from cvtool.infer.session import OnnxModel, open_model

__all__ = [
    "Comparison",
    "ProbFn",
    "Speed",
    "VerifySet",
    "compare_files",
    "compare_predictions",
    "compare_speed",
    "throughput",
    "verification_set",
]

ProbFn = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 → (N, K) probabilities
VerifySet = tuple[list[Path], list[int] | None]  # image files, and their labels when labeled


@dataclass
class Comparison:
    """How closely a candidate model follows a reference on the same images."""

    n: int  # images compared (those that decoded)
    max_abs_diff: float  # max |Δprob| over all images and classes
    agreement: float  # fraction of images with the same top-1 class
    accuracy_ref: float | None = None  # top-1 accuracy, when the images are labeled
    accuracy_cand: float | None = None
    failed: dict[Path, str] = field(default_factory=dict)  # file → why it could not be read
    disagreements: list[Path] = field(default_factory=list)  # files whose top-1 differs

    @property
    def labeled(self) -> bool:
        return self.accuracy_ref is not None

    def describe(self, ref: str, cand: str) -> str:
        """One line for the terminal, e.g. "1000 images: top-1 agreement 99.80 %, …"."""
        text = f"{self.n} images: top-1 agreement {self.agreement:.2%}, max |Δprob| {self.max_abs_diff:.2e}"
        if self.accuracy_ref is not None and self.accuracy_cand is not None:
            delta = 100 * (self.accuracy_cand - self.accuracy_ref)
            text += (
                f"; top-1 accuracy {ref} {self.accuracy_ref:.2%}, {cand} {self.accuracy_cand:.2%} "
                f"({delta:+.2f} points)"
            )
        return text


@dataclass(frozen=True)
class Speed:
    """Images per second of a reference and a candidate model, measured alike on the CPU."""

    reference: float
    candidate: float
    batch_size: int
    threads: int

    @property
    def ratio(self) -> float:
        """Candidate speed / reference speed (> 1: the candidate is faster)."""
        return self.candidate / self.reference

    def describe(self, ref: str, cand: str) -> str:
        return (
            f"speed (CPU, batch {self.batch_size}, {self.threads} threads): {ref} {self.reference:.1f} "
            f"images/s, {cand} {self.candidate:.1f} images/s ({self.ratio:.2f}×)"
        )


def verification_set(
    data: str | os.PathLike,
    class_names: Sequence[str],
    labels_csv: str | os.PathLike | LabelSource | None = None,
) -> VerifySet:
    """Images to compare on, with labels when there are any.

    DATA is labeled when it is an ImageFolder tree (`DATA/<class>/<image>`, folders named after
    the model's classes) or when `labels_csv` (an id,label CSV, or a LabelSource) is given; a flat
    folder is unlabeled.
    Raises DataError naming the folder when it holds no images.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: not a directory")
    has_folders = any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir())
    if isinstance(labels_csv, LabelSource) and labels_csv.layout == "folders":
        labels_csv = None
    if labels_csv is not None or has_folders:
        s = labeled_files(data, list(class_names), labels_csv)
        return s.paths, s.labels
    files = list_images(data).files
    if not files:
        raise DataError(f"{data}: no image files found")
    return files, None


def compare_predictions(
    files: Sequence[Path],
    card: ModelCard,
    reference: ProbFn,
    candidate: ProbFn,
    labels: Sequence[int] | None = None,
    batch_size: int = 64,
    workers: int | None = None,
) -> Comparison:
    """Run both models over `files`; unreadable files are listed, never fatal."""
    if not files:
        raise DataError("no images to compare on")
    label_of = dict(zip(files, labels, strict=True)) if labels is not None else None
    max_diff, same, n = 0.0, 0, 0
    right_ref = right_cand = 0
    failed: dict[Path, str] = {}
    disagreements: list[Path] = []
    for paths, batch, batch_failed in decode_batches(files, card, batch_size, workers):
        failed.update(batch_failed)
        if not len(batch):
            continue
        p_ref, p_cand = reference(batch), candidate(batch)  # (n, K) each
        max_diff = max(max_diff, float(np.abs(p_ref - p_cand).max()))
        top_ref, top_cand = p_ref.argmax(1), p_cand.argmax(1)
        same += int((top_ref == top_cand).sum())
        disagreements += [p for p, a, b in zip(paths, top_ref, top_cand, strict=True) if a != b]
        if label_of is not None:
            y = np.array([label_of[p] for p in paths])
            right_ref += int((top_ref == y).sum())
            right_cand += int((top_cand == y).sum())
        n += len(batch)
    if n == 0:
        first, reason = next(iter(failed.items()))
        raise DataError(f"none of the {len(files)} images could be read ({first}: {reason})")
    return Comparison(
        n=n,
        max_abs_diff=max_diff,
        agreement=same / n,
        accuracy_ref=right_ref / n if label_of is not None else None,
        accuracy_cand=right_cand / n if label_of is not None else None,
        failed=failed,
        disagreements=disagreements,
    )


def throughput(model: OnnxModel, batch_size: int = 32, min_seconds: float = 1.0, min_runs: int = 5) -> float:
    """Images per second of `model.run` on random (batch_size, C, H, W) input, after a warm-up run.

    The median batch time is used, so a burst of load elsewhere on the machine moves it less.
    """
    c, (h, w) = model.card.channels, model.card.input_size
    x = np.random.default_rng(0).normal(size=(batch_size, c, h, w)).astype(np.float32)
    model.run(x)  # warm-up: memory arenas, kernel selection
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    return batch_size / float(np.median(times))


def compare_files(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    verify_set: VerifySet,
    *,
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> Comparison:
    """The ONNX file `candidate` against `reference` on `verify_set`'s images, on the CPU.

    Both see the images through the reference's card (`overrides` > its file's card > defaults).
    """
    ref = open_model(reference, device="cpu", overrides=overrides, threads=threads)
    cand = open_model(candidate, device="cpu", threads=threads)
    files, labels = verify_set
    return compare_predictions(files, ref.card, ref.run, cand.run, labels)


def compare_speed(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    batch_size: int = 32,
    *,
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> Speed:
    """Throughput of two ONNX files on the CPU, same batch size and threads (default: one per core)."""
    n_threads = threads or os.cpu_count() or 1
    ref = open_model(reference, device="cpu", overrides=overrides, threads=n_threads)
    cand = open_model(candidate, device="cpu", threads=n_threads)
    return Speed(throughput(ref, batch_size), throughput(cand, batch_size), batch_size, n_threads)
