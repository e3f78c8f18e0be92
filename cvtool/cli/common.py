"""What the commands share besides options: the consoles, the progress bar, opening a model.

Nothing here imports torch: `train` and `export` check for it inside the command, so predict and
evaluate work where PyTorch is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cvtool.errors import CvtoolError

if TYPE_CHECKING:
    from cvtool.infer.session import OnnxModel

__all__ = [
    "CommandError",
    "console",
    "err_console",
    "open_onnx",
    "progress_bar",
    "report_models",
    "require_torch",
]

# Markup off by default: paths and class names may contain [brackets]. Soft wrap: lines stay
# whole in logs and pipes.
console = Console(highlight=False, markup=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

TRAIN_EXTRA_HINT = 'install the training extra: pip install "cvtool[train]"'


class CommandError(CvtoolError):
    """A command cannot go on (a contradiction between options, a missing extra); exit_code as given."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def require_torch() -> None:
    for module in ("torch", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            raise CommandError(TRAIN_EXTRA_HINT)


def open_onnx(
    model: Path,
    device: str,
    overrides: dict[str, Any],
    verbose: bool,
    *,
    threads: int | None = None,
    batch_size: int | None = None,
) -> OnnxModel:
    """Open a model for a command (see `report_models` for what it prints)."""
    from cvtool.infer.session import open_model

    m = open_model(model, device=device, overrides=overrides, threads=threads, batch_size=batch_size)
    report_models([m], overrides, verbose)
    return m


def report_models(models: list[OnnxModel], overrides: dict[str, Any], verbose: bool) -> None:
    """Warn about a model without a card; with --verbose, show each resolved card and provider."""
    for m in models:
        if not m.has_card and not overrides:
            err_console.print(f"warning: {m.path} carries no cvtool card; using defaults (see --verbose)")
        if m.card.calibration:
            console.print(
                f"{m.path}: calibrated probabilities, logits / {m.card.temperature:.4g} "
                "(cvtool calibrate; --no-calibration to turn off)"
            )
        if verbose:
            source = "file card" if m.has_card else "defaults"
            console.print(f"{m.path} — card ({source}" + (" + CLI overrides" if overrides else "") + "):")
            console.print(m.card.describe())
            console.print(f"provider: {m.provider}")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
