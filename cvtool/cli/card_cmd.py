"""`cvtool card set|show`: the model card of any ONNX file, without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cvtool.cli.common import console, err_console, fail
from cvtool.cli.options import card_options


@card_options
def card_set(
    model: Path = typer.Argument(..., help="An ONNX classifier, e.g. exported by another tool."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write a copy here [default: in place]."),
    card: dict[str, Any] | None = None,
) -> None:
    """Write a card into MODEL: the values given over the file's card (if any) over defaults.

    Checked against the graph (class count vs outputs, channels, a fixed input size); the graph
    itself is not changed. Then predict and evaluate need no flags for this file.
    """
    from cvtool.onnxtools.card_edit import set_card
    from cvtool.onnxtools.model_file import OnnxFileError

    ov = card or {}
    if not ov:
        raise fail("nothing to set: pass --classes, --size, --mean, --std, … (see --help)")
    try:
        card, previous = set_card(model, ov, output)
    except OnnxFileError as e:
        raise fail(str(e)) from None
    if previous is None:
        given = (("--classes", "class_names"), ("--mean", "mean"), ("--std", "std"))
        missing = [flag for flag, key in given if key not in ov]
        if missing:
            err_console.print(f"warning: {model} had no card; defaults used for {', '.join(missing)}")
    console.print(f"wrote the card into {output or model}:")
    for line in card.describe().splitlines():
        console.print(f"  {line}")


def card_show(model: Path = typer.Argument(..., help="An ONNX file.")) -> None:
    """Print the file's card as JSON (exit 1 when it has none)."""
    from cvtool.contract import CardError
    from cvtool.onnxtools.card_edit import read_card
    from cvtool.onnxtools.model_file import OnnxFileError, load_onnx

    try:
        card = read_card(load_onnx(model))
    except (OnnxFileError, CardError) as e:
        raise fail(f"{model}: {e}" if isinstance(e, CardError) else str(e)) from None
    if card is None:
        raise fail(f"{model} has no cvtool card", code=1)
    console.print(json.dumps(card.to_dict(), indent=2, ensure_ascii=False))
