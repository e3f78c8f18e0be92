"""Explanation options shared by `cvtool evaluate`, `cvtool occlusion` and `cvtool cam`, declared once.

Defaults and checks against the model's input size are `cvtool.evaluation.occlusion.resolve_window`'s;
None here means "not given". The faithfulness default is `cvtool.evaluation.faithfulness`'s.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cvtool.evaluation.occlusion import Baseline

__all__ = [
    "BaselineOpt",
    "CamLayerOpt",
    "DeletionBaselineOpt",
    "FaithfulnessOpt",
    "FaithfulnessStepsOpt",
    "StrideOpt",
    "TargetOpt",
    "WindowOpt",
]

WindowOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Occlusion window side in input pixels (default: 7, or 1/8 of the shorter side when larger).",
    ),
]
StrideOpt = Annotated[
    int | None, typer.Option(min=1, help="Occlusion window step (default: half the window).")
]
BaselineOpt = Annotated[
    Baseline,
    typer.Option(
        help="What the window shows: mean (training mean colour), zero (black) or blur (blurred image)."
    ),
]
TargetOpt = Annotated[
    str,
    typer.Option(
        help="Class whose probability is mapped: pred, true (from --labels, --label-pattern or "
        "the parent folder's name) or a class name."
    ),
]
CamLayerOpt = Annotated[
    str | None,
    typer.Option(
        help="Feature map to split the graph at: module path (layer4), tensor or node name "
        "(default: the last spatial map before the pooling / flatten; see cvtool activations --list-layers).",
    ),
]
FaithfulnessOpt = Annotated[
    bool,
    typer.Option(
        "--faithfulness/--no-faithfulness",
        help="Score each map by deletion and insertion AUC (RISE) against a seeded random map: "
        "4 × steps forward passes per map.",
    ),
]
FaithfulnessStepsOpt = Annotated[
    int, typer.Option(min=1, help="Deletion / insertion steps (each removes 1/steps of the pixels).")
]
DeletionBaselineOpt = Annotated[
    Baseline,
    typer.Option(
        "--baseline",
        help="What deleted pixels show (--faithfulness): mean (training mean colour), zero (black) "
        "or blur (blurred image).",
    ),
]
