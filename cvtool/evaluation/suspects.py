"""Suspected label errors from held-out probabilities: confident learning's per-class thresholds.

The rule (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021): the threshold of class j is its mean self-confidence,
t_j = mean p(j|x) over the images labeled j. An image labeled i is confidently in class j when
p(j|x) >= t_j; among the classes it is confidently in, the one with the highest p(j|x) is its
suspected class. The image is a suspect when that class is not i and the model's top class is
not i either (cleanlab drops the latter too: a model that agrees with the label is no evidence
against it). Suspects are ranked by margin, p(suspected) - p(given), largest first.

This is cleanlab's `find_label_issues(labels, pred_probs, filter_by="confident_learning")` with
one difference, the paper's: when two or more classes are over their thresholds, cleanlab takes
the model's top class even if that one is under its own threshold; here the suspected class is
always one over its threshold (tests/test_suspects.py checks both statements).

Probabilities must be held out: those of the evaluated images, or the out-of-fold ones that
k-fold training writes (path, label, fold, p_<class>…, logit_<class>…; cvtool/evaluation/oof.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.contract import ModelCard
from cvtool.evaluation.failures import GALLERY_MAX
from cvtool.evaluation.oof import read_oof
from cvtool.evaluation.outputs import write_csv
from cvtool.images import ImageError, load_image, resize_and_crop

__all__ = [
    "Suspect",
    "SuspectFiles",
    "SuspectReport",
    "confident_thresholds",
    "find_suspects",
    "oof_suspects",
    "rank_suspects",
    "suspect_report",
    "write_suspects",
]

# Both comparisons are cleanlab's, with its tolerance: a probability equal to the threshold (up
# to float32 rounding) is over it, and a given label within it of the top class is the top class.
TOLERANCE = 1e-6
# cleanlab's floor: a class whose own images all get p = 0 must not take every image as confident.
MIN_THRESHOLD = 2e-6


@dataclass(frozen=True)
class Suspect:
    """One image whose given label the model confidently disputes; rank 1 has the largest margin."""

    rank: int
    path: str  # the image file
    given: int
    suspected: int
    p_given: float
    p_suspected: float

    @property
    def margin(self) -> float:
        return self.p_suspected - self.p_given


@dataclass(frozen=True)
class SuspectReport:
    """Where the probabilities came from, the per-class thresholds, and every suspect, ranked."""

    source: str  # "evaluated images", or the OOF CSV's path
    n: int  # images the thresholds and the search ran over
    thresholds: dict[str, float]  # class name → t_j (absent: no image carries that label)
    suspects: list[Suspect]


@dataclass(frozen=True)
class SuspectFiles:
    """What `write_suspects` wrote: suspects.csv, and the gallery (None: no image to show)."""

    csv: Path
    gallery: Path | None
    shown: int


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j = mean p(j|x) over the images labeled j; +inf for a class no image is labeled with."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k, np.float64)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    return np.maximum(t, MIN_THRESHOLD)


def find_suspects(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_suspect, suspected class) per image, by the rule in the module docstring.

    `labels`: (N,) given class indices; `probs`: (N, K) held-out probabilities. The suspected
    class is -1 where no class is over its threshold.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    t = confident_thresholds(labels, probs)
    confident = probs >= t - TOLERANCE
    # The most probable of the classes over their thresholds (-inf elsewhere).
    suspected = np.where(confident, probs, -np.inf).argmax(axis=1)
    suspected[~confident.any(axis=1)] = -1
    rows = np.arange(len(labels))
    boosted = probs.copy()
    boosted[rows, labels] += TOLERANCE
    model_agrees = boosted.argmax(axis=1) == labels
    return (suspected >= 0) & (suspected != labels) & ~model_agrees, suspected


def rank_suspects(paths: Sequence[str | os.PathLike], labels: np.ndarray, probs: np.ndarray) -> list[Suspect]:
    """Every suspect, by margin p(suspected) - p(given), largest first (ties keep the input order)."""
    labels = np.asarray(labels, dtype=np.int64)
    mask, suspected = find_suspects(labels, probs)
    idx = np.flatnonzero(mask)
    rows = np.arange(len(labels))
    p_given = probs[rows, labels]
    p_susp = probs[rows, np.maximum(suspected, 0)]
    order = idx[np.argsort(-(p_susp[idx] - p_given[idx]), kind="stable")]
    return [
        Suspect(
            rank=r,
            path=str(paths[i]),
            given=int(labels[i]),
            suspected=int(suspected[i]),
            p_given=float(p_given[i]),
            p_suspected=float(p_susp[i]),
        )
        for r, i in enumerate(order, start=1)
    ]


def suspect_report(
    source: str,
    paths: Sequence[str | os.PathLike],
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
) -> SuspectReport:
    """The thresholds and ranked suspects of a set of held-out probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    t = confident_thresholds(labels, probs) if len(labels) else np.full(len(names), np.inf)
    return SuspectReport(
        source=source,
        n=len(labels),
        thresholds={n: float(v) for n, v in zip(names, t, strict=True) if math.isfinite(v)},
        suspects=rank_suspects(paths, labels, probs),
    )


def oof_suspects(path: str | os.PathLike, class_names: Sequence[str]) -> SuspectReport:
    """Suspects among the images of an out-of-fold CSV (cvtool/evaluation/oof.py) of a model with
    `class_names`. Its paths are as training listed them; one that is relative and not found from
    here is taken relative to the CSV's folder, so a run folder can be moved whole."""
    table = read_oof(path, class_names)
    base = Path(path).parent
    paths = [p if os.path.isabs(p) or os.path.exists(p) else str(base / p) for p in table.paths]
    return suspect_report(str(path), paths, table.labels, table.probs, class_names)


def write_suspects(
    out_dir: str | os.PathLike,
    report: SuspectReport,
    class_names: Sequence[str],
    card: ModelCard,
    k: int,
) -> SuspectFiles:
    """Write suspects.csv (every suspect, ranked) and suspects.png (the `k` first, as thumbnails)."""
    from cvtool.evaluation.plots import plot_image_grid

    out = Path(out_dir)
    write_csv(
        out / "suspects.csv",
        ["rank", "file", "given", "suspected", "p_given", "p_suspected", "margin"],
        [
            [
                s.rank,
                s.path,
                class_names[s.given],
                class_names[s.suspected],
                f"{s.p_given:.6f}",
                f"{s.p_suspected:.6f}",
                f"{s.margin:.6f}",
            ]
            for s in report.suspects
        ],
    )
    gallery: Path | None = None
    (out / "suspects.png").unlink(missing_ok=True)  # an earlier run's gallery must not linger
    images, titles = [], []
    for s in report.suspects[: min(k, GALLERY_MAX)]:
        try:
            img = resize_and_crop(load_image(s.path, card), card)
        except ImageError:
            continue  # listed in suspects.csv all the same; the caption counts the tiles
        images.append(np.asarray(img))
        titles.append(
            f"{_short(class_names[s.given])} → {_short(class_names[s.suspected])}\n"
            f"{s.p_given:.2f} → {s.p_suspected:.2f}"
        )
    if images:
        gallery = plot_image_grid(
            images,
            titles,
            out / "suspects.png",
            suptitle=f"Top {len(images)} suspected label errors — given → suspected, p(given) → p(suspected)",
        )
    return SuspectFiles(out / "suspects.csv", gallery, len(images))


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
