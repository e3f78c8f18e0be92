"""`cvtool export`: the command line over cvtool.export (torch imported inside)."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import app, console, fail, require_torch


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A cvtool checkpoint (best.pt / last.pt)."),
    output: Path = typer.Option(..., "--output", "-o", help="ONNX file to write."),
    opset: int = typer.Option(18, help="ONNX opset version."),
) -> None:
    """Export a checkpoint to ONNX with a dynamic batch and the model card embedded."""
    require_torch()
    from cvtool.export.onnx_export import ExportError, export_checkpoint
    from cvtool.train.checkpoint import CheckpointError

    try:
        info = export_checkpoint(checkpoint, output, opset=opset)
    except (CheckpointError, ExportError) as e:
        raise fail(str(e)) from None
    console.print(
        f"wrote {info['path']} (opset {info['opset']}, {info['card'].num_classes} classes, "
        f"max |Δprob| vs PyTorch {info['max_abs_prob_diff']:.1e})"
    )
