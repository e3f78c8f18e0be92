"""What `evaluate()` returns: typed metrics, the tables behind them and the files it wrote.

`EvalResult.metrics_json()` is the content of metrics.json, key for key and in the same order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.evaluation.cam import CamImage
from cvtool.evaluation.failures import Failure
from cvtool.evaluation.leaks import WithoutLeaks
from cvtool.evaluation.occlusion import OcclusionMap
from cvtool.evaluation.suspects import SuspectReport
from cvtool.timing import StageTimes

__all__ = ["CamSettings", "ClassScores", "EvalResult", "OcclusionSettings", "Scores"]


@dataclass(frozen=True)
class Scores:
    """Precision, recall and F1 (of a class, or averaged over classes)."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClassScores(Scores):
    """One class's scores and how many images truly belong to it."""

    support: int


@dataclass(frozen=True)
class OcclusionSettings:
    """How the occlusion maps were made, and how many images got one."""

    window: int
    stride: int
    baseline: str
    images: int


@dataclass(frozen=True)
class CamSettings:
    """Where the graph was split for the class activation maps, and how many images got one."""

    layer: str
    tensor: str
    cells: str  # "h×w"
    images: int


@dataclass
class EvalResult:
    """Metrics of one evaluation (metrics.json's keys are its fields) and what the run produced."""

    n: int  # images in the metrics
    accuracy: float
    per_class: dict[str, ClassScores]
    macro: Scores
    weighted: Scores
    # Probability metrics: None when no image could be scored; top-5 only above five classes.
    top5_accuracy: float | None
    log_loss: float | None
    expected_calibration_error: float | None
    ece_bins: int | None
    model: str
    data: str
    provider: str
    images_per_s: float
    reliability: dict[str, Any]  # reliability_bins(): edges, count, confidence, accuracy
    confusion_matrix: np.ndarray  # (K, K) counts, rows = true class
    most_confused: list[tuple[str, str, int]]  # (true, predicted, count), largest first
    failures: list[Failure]  # every misclassified image, highest loss first
    skipped_files: dict[str, int] = field(default_factory=dict)  # {reason: count}, never read
    failed_images: int = 0  # unreadable images left out of the metrics
    unreadable: dict[Path, str] = field(default_factory=dict)  # failed_images.csv: every one, and why
    occlusion: OcclusionSettings | None = None  # None: no occlusion maps
    occlusion_maps: list[OcclusionMap] = field(default_factory=list)
    cam: CamSettings | None = None  # None: no class activation maps
    cam_maps: list[CamImage] = field(default_factory=list)
    # Deletion / insertion scoring: steps, seed, baseline and the mean AUCs of each kind of map.
    faithfulness: dict[str, Any] | None = None
    # A calibrated card: the same metrics and bins without its temperature (the reliability
    # diagram before calibration); None for an uncalibrated model.
    uncalibrated: dict[str, Any] | None = None
    suspects: SuspectReport | None = None  # None: --suspects not asked for
    without_leaks: WithoutLeaks | None = None  # None: --exclude-leaks not given
    files: list[str] = field(default_factory=list)  # names written in the output folder ("x/": folder)
    times: StageTimes | None = None  # where the time went (None: no model was run)

    def metrics_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        m: dict[str, Any] = {
            "n": self.n,
            "accuracy": self.accuracy,
            "per_class": {name: dataclasses.asdict(c) for name, c in self.per_class.items()},
            "macro": dataclasses.asdict(self.macro),
            "weighted": dataclasses.asdict(self.weighted),
        }
        optional = {
            "top5_accuracy": self.top5_accuracy,
            "log_loss": self.log_loss,
            "expected_calibration_error": self.expected_calibration_error,
            "ece_bins": self.ece_bins,
        }
        m.update({k: v for k, v in optional.items() if v is not None})
        m.update(
            {
                "model": self.model,
                "data": self.data,
                "failed_images": self.failed_images,
                "skipped_files": self.skipped_files,
                "provider": self.provider,
                "images_per_s": round(self.images_per_s, 1),
                "reliability": self.reliability,
            }
        )
        if self.uncalibrated is not None:
            m["uncalibrated"] = self.uncalibrated
        if self.occlusion is not None:
            m["occlusion"] = dataclasses.asdict(self.occlusion)
        if self.cam is not None:
            m["cam"] = dataclasses.asdict(self.cam)
        if self.faithfulness is not None:
            m["faithfulness"] = self.faithfulness
        if self.suspects is not None:
            s = self.suspects
            m["suspects"] = {
                "source": s.source,
                "n": s.n,
                "count": len(s.suspects),
                "thresholds": s.thresholds,
            }
        if self.without_leaks is not None:
            m["without_leaks"] = dataclasses.asdict(self.without_leaks)
        return m
