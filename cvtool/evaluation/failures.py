"""Misclassified images, worst first: a folder per confusion, failures.csv and the top-loss gallery.

    failures/<true>__as__<pred>/<rank>_loss<loss>_<stem>.<ext>   copies of the K worst failures
    failures.csv                                                  every failure, sorted by loss
    top_losses.png                                                a titled grid of the worst ones

failures/ is built beside the old one and swapped in, so it never mixes two runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.contract import ModelCard
from cvtool.evaluation.outputs import fresh_dir, safe_filename, write_csv
from cvtool.evaluation.plots import plot_image_grid
from cvtool.images import ImageError, load_image, resize_and_crop

__all__ = ["Failure", "FailureFiles", "GALLERY_MAX", "rank_failures", "write_failures"]

GALLERY_MAX = 36  # tiles in top_losses.png; more stop being readable on one page


@dataclass(frozen=True)
class Failure:
    """One misclassified image; rank 1 has the highest loss."""

    rank: int
    path: Path
    true: int
    pred: int
    loss: float
    p_true: float
    p_pred: float


@dataclass(frozen=True)
class FailureFiles:
    """What `write_failures` wrote: the copies' folder, failures.csv and the gallery (None: no tile)."""

    copied: int
    folder: Path
    csv: Path
    gallery: Path | None


def rank_failures(
    paths: Sequence[Path], y_true: np.ndarray, probs: np.ndarray, loss: np.ndarray
) -> list[Failure]:
    """All misclassified images, highest loss first (ties keep the input order)."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    order = wrong[np.argsort(-loss[wrong], kind="stable")]
    return [
        Failure(
            rank=r,
            path=Path(paths[i]),
            true=int(y_true[i]),
            pred=int(y_pred[i]),
            loss=float(loss[i]),
            p_true=float(probs[i, y_true[i]]),
            p_pred=float(probs[i, y_pred[i]]),
        )
        for r, i in enumerate(order, start=1)
    ]


def _copy_tree(failures: Sequence[Failure], class_names: Sequence[str], root: Path) -> dict[int, str]:
    """Copy each failure into root/<true>__as__<pred>/; returns {rank: path relative to root's parent}."""
    width = len(str(len(failures)))
    rel: dict[int, str] = {}
    for f in failures:
        folder = f"{safe_filename(class_names[f.true])}__as__{safe_filename(class_names[f.pred])}"
        name = f"{f.rank:0{width}d}_loss{f.loss:.3f}_{safe_filename(f.path.stem)}{f.path.suffix.lower()}"
        dst = root / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Copies, not hard links: editing a file here must never change the dataset.
        shutil.copyfile(f.path, dst)
        rel[f.rank] = f"failures/{folder}/{name}"
    return rel


def write_failures(
    out_dir: str | os.PathLike,
    failures: Sequence[Failure],
    class_names: Sequence[str],
    card: ModelCard,
    k: int,
) -> FailureFiles:
    """Copy the `k` worst failures, write failures.csv (all of them) and top_losses.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = list(failures[:k])
    with fresh_dir(out, "failures") as tmp:
        rel = _copy_tree(top, class_names, tmp)
    write_csv(
        out / "failures.csv",
        ["rank", "path", "true", "pred", "loss", "p_true", "p_pred", "copy"],
        [
            [
                f.rank,
                str(f.path),
                class_names[f.true],
                class_names[f.pred],
                f"{f.loss:.6f}",
                f"{f.p_true:.6f}",
                f"{f.p_pred:.6f}",
                rel.get(f.rank, ""),
            ]
            for f in failures
        ],
    )
    gallery: Path | None = None
    (out / "top_losses.png").unlink(missing_ok=True)  # a previous run's gallery must not linger
    shown = top[:GALLERY_MAX]
    if shown:
        images, titles = [], []
        for f in shown:
            try:
                img = resize_and_crop(load_image(f.path, card), card)
            except ImageError:
                continue  # it decoded a moment ago; if it vanished since, the grid has one tile less
            images.append(np.asarray(img))
            titles.append(
                f"{_short(class_names[f.pred])} / {_short(class_names[f.true])}\n"
                f"{f.loss:.2f} / {f.p_pred:.2f}"
            )
        gallery = plot_image_grid(
            images,
            titles,
            out / "top_losses.png",
            suptitle=f"Top {len(images)} losses — predicted / true, loss / probability of the prediction",
        )
    return FailureFiles(len(top), out / "failures", out / "failures.csv", gallery)


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
