"""`cvtool data …`: dataset preparation (Fashion-MNIST as Kaggle ships it; splitting a labeled folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cvtool.cli.common import console
from cvtool.cli.options import OptionError, label_options
from cvtool.data import LabelSource
from cvtool.data_split import SPLITS, LinkMode, split_dataset


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


@label_options
def split(
    src: Annotated[
        Path, typer.Argument(help="Labeled images: SRC/<class>/<image>, or with --labels or --label-pattern.")
    ],
    out: Annotated[
        Path, typer.Argument(help="Folder to create (new or empty): train/, val/, test/, split.csv.")
    ],
    labels: LabelSource = LabelSource(),
    val: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of each class for val/.")] = 0.15,
    test: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of each class for test/ (0: no test/).")
    ] = 0.15,
    per_class: Annotated[
        int | None, typer.Option(min=1, help="First take a random N of each class (fewer: all are kept).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and of --per-class.")] = 0,
    link: Annotated[
        LinkMode,
        typer.Option(help="hard: hard links (same filesystem, no space used), symlink, or copy."),
    ] = "hard",
) -> None:
    """Split labeled images into OUT/train|val|test/<class>/, stratified and seeded, plus OUT/split.csv.

    Reads any layout (class folders, --labels CSV, --label-pattern) without moving a file: the
    files are hard-linked (or symlinked, or copied) under their own names.
    """
    if val + test >= 1:
        raise OptionError(f"--val {val} and --test {test} leave nothing to train on: keep their sum below 1")
    r = split_dataset(src, out, labels, val, test, per_class, seed, link, log=console.print)
    splits = [s for s in SPLITS if r.total(s)]
    how = "copies" if link == "copy" else f"{link} links"
    table = Table(title=f"{out}: {sum(r.total(s) for s in splits)} files ({how})")
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    for cls in r.samples.classes:
        table.add_row(cls, *(str(r.counts[s].get(cls, 0)) for s in splits))
    table.add_section()
    table.add_row("total", *(str(r.total(s)) for s in splits))
    console.print(table)
    for cls, n in r.short_classes.items():
        console.print(f"{cls}: {n} files, fewer than --per-class {per_class}: all kept")
    if r.renamed:
        console.print(f"{len(r.renamed)} file(s) renamed where two sources share a name in one class folder:")
        for source, rel in r.renamed[:5]:
            console.print(f"  {source} → {rel}")
    console.print(f"wrote {out}/split.csv (file, class, split, source)")
