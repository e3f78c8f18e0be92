"""Occlusion options shared by `cvtool evaluate` and `cvtool occlusion`, declared once.

Defaults and checks against the model's input size are `cvtool.evaluation.occlusion.resolve_window`'s;
None here means "not given".
"""

from __future__ import annotations

from typing import Annotated

import typer

from cvtool.evaluation.occlusion import Baseline

__all__ = ["BaselineOpt", "StrideOpt", "WindowOpt"]

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
