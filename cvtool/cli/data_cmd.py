"""`cvtool data …`: dataset preparation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import console


def fashion_mnist(
    out: Annotated[Path, typer.Argument(help="Folder to create (train/, test/, CSVs).")],
    source: Annotated[
        Path | None,
        typer.Option(
            help="Folder with the four IDX files (default: /usr/share/datasets/fashion-mnist "
            "when present, else download with checksum verification)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the shuffled test ids.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if OUT is already prepared.")] = False,
) -> None:
    """Lay Fashion-MNIST out as a Kaggle competition: train/<class>/, test/<id>.png, CSVs."""
    from cvtool.fashion_mnist import prepare

    path = prepare(out, source=source, seed=seed, force=force, log=console.print)
    console.print(f"dataset ready: {path}/train (ImageFolder), {path}/test, {path}/test_labels.csv")
