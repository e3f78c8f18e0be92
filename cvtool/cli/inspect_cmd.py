"""`cvtool inspect`: what an ONNX file holds, without running it (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cvtool.cli.common import console


def _shape(dims: list) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def inspect(
    model: Annotated[Path, typer.Argument(help="An ONNX file (cvtool's or any other tool's).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Inputs/outputs with shapes, opset, card, parameter count, file size and operator histogram."""
    from cvtool.onnxtools.inspect import inspect_model

    info = inspect_model(model)
    if as_json:
        console.print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False))
        return

    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(info.opsets.items()))
    console.print(f"{info.path}: {info.file_bytes / 1e6:.2f} MB ({info.file_bytes:,} bytes)")
    console.print(f"IR version {info.ir_version}; opsets: {opsets}; producer: {info.producer or 'unknown'}")
    io = Table("", "name", "type", "shape", box=None, pad_edge=False)
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            io.add_row(kind, t.name, t.dtype, _shape(t.shape))
    console.print(io)
    by_type = ", ".join(f"{dt} {n:,}" for dt, n in info.parameter_dtypes.items())
    console.print(f"parameters: {info.parameters:,}" + (f" ({by_type})" if by_type else ""))
    if info.card is not None:
        precision = info.card.extra.get("precision")
        console.print("card:" + (f" (precision {precision})" if precision else ""))
        for line in info.card.describe().splitlines():
            console.print(f"  {line}")
    elif info.card_error:
        console.print(f"card: unusable ({info.card_error})")
    else:
        console.print("card: no card (pass --classes/--size/--mean/--std, or `cvtool card set`)")
    ops = Table("op", "count", box=None, pad_edge=False)
    for op, n in info.ops.items():
        ops.add_row(op, str(n))
    console.print(f"operators ({info.nodes} nodes):")
    console.print(ops)
