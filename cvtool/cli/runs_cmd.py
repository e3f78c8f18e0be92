"""`cvtool runs`: training runs side by side (cvtool.evaluation.runs), as a table, CSV/Markdown, a plot.

Torch-free: only an old run (no run.json) whose card.json does not give its parameter count
imports torch, inside `_checkpoint_params`, to rebuild the network from best.pt; without torch
the count is shown as "?".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cvtool.cli.common import console, err_console
from cvtool.errors import CvtoolError
from cvtool.evaluation.runs import runs_table, sort_runs
from cvtool.evaluation.runs_output import format_value, is_numeric, plot_overlay, write_runs


def _checkpoint_params(run: Path) -> tuple[int, int] | None:
    """(total, trainable) parameters of RUN/best.pt (else last.pt); None without torch or a checkpoint."""
    try:
        from cvtool.train.summary import checkpoint_summary
    except ImportError:  # no torch: the count stays unknown
        return None
    for name in ("best.pt", "last.pt"):
        if not (run / name).is_file():
            continue
        try:
            s = checkpoint_summary(run / name)
        except (CvtoolError, RuntimeError, KeyError, TypeError, ValueError):
            continue  # an unreadable or foreign checkpoint: try the next, else "?"
        return s.total, s.trainable if s.trainable is not None else s.total
    return None


def runs(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="Run folders (cvtool train --out), or folders of runs (expanded one level).",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the table: Markdown for .md, else CSV.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG overlaying every run's validation accuracy and loss (dashed: LR drops)."),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            help="Column to sort by: accuracies and img/s largest first, others smallest first "
            "(default: the order given)."
        ),
    ] = None,
) -> None:
    """One row per training run: arch, parameters, the settings that differ, best validation
    epoch and scores, time, and test scores from an evaluate output in the run folder."""
    table = runs_table(paths, count_params=_checkpoint_params)
    if sort is not None:
        table = sort_runs(table, sort)
    if table.rows:
        view = Table(title_justify="left")
        for c in table.columns:
            view.add_column(c, justify="right" if is_numeric(table, c) else "left")
        for r in table.rows:
            view.add_row(*(format_value(c, r[c]) for c in table.columns))
        # As wide as it needs: a report table with cut-off cells ("0.66…") is no use.
        needed = console.measure(view, options=console.options.update(max_width=100_000)).maximum
        # console.print clamps `width` to the terminal: print through a console as wide as needed.
        wide = Console(width=max(console.width, needed), highlight=False, markup=False, file=console.file)
        wide.print(view)
    for note in table.notes:
        console.print(f"note: {note}")
    if output is not None and table.rows:
        console.print(f"wrote {write_runs(table, output)}")
    if plot is not None and table.runs:
        console.print(f"wrote {plot_overlay(table.runs, plot)}")
    for folder, reason in table.failed.items():
        err_console.print(f"could not list {folder}: {reason}")
    if table.failed:
        raise typer.Exit(1)
