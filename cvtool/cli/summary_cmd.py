"""`cvtool summary`: a Keras-style table of a checkpoint or an ONNX file (the latter without torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cvtool.cli.common import CommandError, console, require_torch


def _shape(shape: tuple[int | str, ...] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def summary(
    model: Annotated[Path, typer.Argument(help="A cvtool checkpoint (.pt) or an ONNX file (.onnx).")],
) -> None:
    """Layers, output shapes and parameter counts, with totals."""
    if not model.is_file():
        raise CommandError(f"{model}: file not found")
    if model.suffix.lower() == ".onnx":
        from cvtool.onnxtools.summary import onnx_summary

        s = onnx_summary(model)
    else:
        require_torch()  # rebuilding a checkpoint's network needs PyTorch
        from cvtool.train.summary import checkpoint_summary

        s = checkpoint_summary(model)
    table = Table(title=f"{model}  input {_shape(s.input_shape)}", title_justify="left")
    table.add_column("layer (type)")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="center")
    for r in s.rows:
        trainable = "" if r.trainable is None else ("yes" if r.trainable else "no")
        table.add_row(f"{r.name} ({r.kind})", _shape(r.output_shape), f"{r.params:,}", trainable)
    console.print(table)
    console.print(f"total params: {s.total:,}")
    if s.trainable is not None:
        console.print(f"trainable params: {s.trainable:,}")
        console.print(f"non-trainable params: {s.non_trainable:,}")
    for note in s.notes:
        console.print(f"note: {note}")
