"""`cvtool train`: the command line over cvtool.train (torch imported inside)."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import app, console, fail, require_torch


@app.command()
def train(
    data: Path = typer.Argument(..., help="ImageFolder tree: DATA/<class>/<image>."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder to write."),
    arch: str = typer.Option("simple_cnn", help="Architecture (see --list-archs)."),
    epochs: int = typer.Option(5, min=1),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    weight_decay: float = typer.Option(0.0, help="L2 penalty (Adam weight_decay)."),
    val_split: float = typer.Option(0.1, help="Stratified validation fraction."),
    seed: int = typer.Option(0),
    size: int | None = typer.Option(None, help="Square input size [default: from the data]."),
    channels: int | None = typer.Option(None, help="1 or 3 [default: from the data]."),
    hflip: bool = typer.Option(False, help="Random horizontal flips while training."),
    workers: int | None = typer.Option(None, help="DataLoader worker processes."),
    subset: int | None = typer.Option(None, help="Use at most N training images."),
    list_archs: bool = typer.Option(False, "--list-archs", help="List architectures and exit."),
) -> None:
    """Train a classifier on an ImageFolder tree; writes best.pt, last.pt, metrics.csv."""
    require_torch()
    from cvtool.train.models import ARCHS

    if list_archs:
        for name in sorted(ARCHS):
            console.print(f"{name:12s} {ARCHS[name][1]}")
        raise typer.Exit(0)
    if arch not in ARCHS:
        raise fail(f"unknown --arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}")
    from cvtool.data import DataError
    from cvtool.train.loop import TrainConfig
    from cvtool.train.loop import train as run_training

    cfg = TrainConfig(
        data=str(data), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, val_split=val_split, seed=seed, size=size, channels=channels,
        hflip=hflip, workers=workers, subset=subset,
    )  # fmt: skip
    try:
        result = run_training(cfg, log=console.print)
    except (DataError, ValueError, FloatingPointError) as e:
        raise fail(str(e)) from None
    console.print(f"best val accuracy {result['best_val_acc']:.4f}; checkpoints in {out}/")
