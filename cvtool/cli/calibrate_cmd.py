"""`cvtool calibrate`: temperature scaling fitted on held-out data, written into the card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import console, err_console, open_onnx, progress_bar
from cvtool.cli.options import (
    BatchOpt,
    DeviceOpt,
    OptionError,
    VerboseOpt,
    WorkersOpt,
    card_options,
    label_options,
)
from cvtool.data import LabelSource


@card_options
@label_options
def calibrate(
    model: Annotated[Path, typer.Argument(help="An ONNX classifier (logits out).")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Held-out labeled images (any layout, see --labels); or give --oof."),
    ] = None,
    *,
    card: dict[str, Any],
    labels: LabelSource,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: MODEL.calibrated.onnx).")
    ] = None,
    oof: Annotated[
        Path | None, typer.Option(help="Fit on out-of-fold predictions (RUN/oof.csv) instead of images.")
    ] = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fit one temperature T on held-out data (minimum log loss) and write it into the card.

    Predict and evaluate then divide the logits by T (--no-calibration: not); the graph is unchanged.
    """
    from cvtool.evaluation.calibration import calibrate as run_calibrate

    if (data is None) == (oof is None):
        raise OptionError("give the held-out DATA folder or --oof RUN/oof.csv (one of them)")
    # Writing over MODEL is allowed: the file is replaced atomically after the fit.
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".calibrated.onnx")
    m = open_onnx(model, device, {**card, "calibration": False}, verbose)
    with progress_bar() as progress:
        task = progress.add_task("calibrate", total=None)
        r = run_calibrate(
            m, output, data, labels, oof=oof, batch_size=batch_size, workers=workers,
            on_start=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )  # fmt: skip
    console.print(
        f"temperature {r.temperature:.4f} fitted on {r.n} images of {r.fitted_on}: "
        f"log loss {r.nll_before:.4f} → {r.nll_after:.4f}, ECE {r.ece_before:.4f} → {r.ece_after:.4f}, "
        f"accuracy {r.accuracy:.4f} (unchanged)"
    )
    if r.note:
        console.print(f"note: {r.note}")
    console.print(f"wrote {r.output} (the card carries the temperature; the graph is unchanged)")
    if r.failed:
        err_console.print(f"{len(r.failed)} image(s) could not be read and were left out:")
        for p, reason in list(r.failed.items())[:10]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)
