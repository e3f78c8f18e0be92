"""`cvtool data …`: dataset preparation."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import console, fail


def fashion_mnist(
    out: Path = typer.Argument(..., help="Folder to create (train/, test/, CSVs)."),
    source: Path | None = typer.Option(
        None,
        help="Folder with the four IDX files [default: /usr/share/datasets/fashion-mnist "
        "when present, else download with checksum verification].",
    ),
    seed: int = typer.Option(0, help="Seed for the shuffled test ids."),
    force: bool = typer.Option(False, help="Rebuild even if OUT is already prepared."),
) -> None:
    """Lay Fashion-MNIST out as a Kaggle competition: train/<class>/, test/<id>.png, CSVs."""
    from cvtool.data import DataError
    from cvtool.fashion_mnist import prepare

    try:
        path = prepare(out, source=source, seed=seed, force=force, log=console.print)
    except (DataError, OSError) as e:
        raise fail(str(e)) from None
    console.print(f"dataset ready: {path}/train (ImageFolder), {path}/test, {path}/test_labels.csv")
