"""`cvtool card set|show`: the model card of any ONNX file, without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import CommandError, console, err_console
from cvtool.cli.options import OptionError, card_options


@card_options
def card_set(
    model: Annotated[Path, typer.Argument(help="An ONNX classifier, e.g. exported by another tool.")],
    card: dict[str, Any],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write a copy here (default: in place).")
    ] = None,
) -> None:
    """Write a card into MODEL: the values given over the file's card (if any) over defaults.

    Checked against the graph (class count vs outputs, channels, a fixed input size); the graph
    itself is not changed. Then predict and evaluate need no flags for this file.
    """
    from cvtool.onnxtools.card_edit import set_card

    if not card:
        raise OptionError("nothing to set: pass --classes, --size, --mean, --std, … (see --help)")
    written, previous = set_card(model, card, output)
    if previous is None:
        given = (("--classes", "class_names"), ("--mean", "mean"), ("--std", "std"))
        missing = [flag for flag, key in given if key not in card]
        if missing:
            err_console.print(f"warning: {model} had no card; defaults used for {', '.join(missing)}")
    console.print(f"wrote the card into {output or model}:")
    for line in written.describe().splitlines():
        console.print(f"  {line}")


def card_show(model: Annotated[Path, typer.Argument(help="An ONNX file.")]) -> None:
    """Print the file's card as JSON (exit 1 when it has none)."""
    from cvtool.contract import CardError
    from cvtool.onnxtools.card_edit import read_card
    from cvtool.onnxtools.model_file import load_onnx

    try:
        card = read_card(load_onnx(model))
    except CardError as e:
        raise CommandError(f"{model}: {e}") from None
    if card is None:
        raise CommandError(f"{model} has no cvtool card", exit_code=1)
    console.print(json.dumps(card.to_dict(), indent=2, ensure_ascii=False))
