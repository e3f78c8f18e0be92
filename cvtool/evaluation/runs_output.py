"""The runs table on paper: cells as shown, CSV or Markdown files, the overlaid validation curves.

The table itself (cvtool.evaluation.runs) holds raw values; the console and Markdown show them
through `format_value`, CSV keeps them as they are. matplotlib is imported inside the plot.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtool.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text
from cvtool.evaluation.runs import RunInfo, RunsTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["format_value", "is_numeric", "overlay_figure", "plot_overlay", "write_runs"]


def format_value(column: str, value: Any) -> str:
    """How a cell is shown (console and Markdown); CSV keeps the raw values."""
    if value is None:
        return "?" if column == "parameters" else "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column == "parameters":
        return f"{value:,}"
    if column in ("val_acc", "val_loss", "test_acc", "test_loss"):
        return f"{value:.4f}"
    if column == "train_s":
        return f"{value:.1f}"
    if column == "img_per_s":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list | dict) else value


def is_numeric(table: RunsTable, column: str) -> bool:
    values = [r[column] for r in table.rows if r[column] is not None]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def write_runs(table: RunsTable, path: str | os.PathLike) -> Path:
    """Write the table atomically: Markdown for a .md file, else CSV (raw values, "" = missing)."""
    path = Path(path)
    if path.suffix.lower() != ".md":
        atomic_write_csv(path, table.columns, ([_csv_value(r[c]) for c in table.columns] for r in table.rows))
        return path

    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "|".join("---:" if is_numeric(table, c) else "---" for c in table.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(cell(format_value(c, r[c])) for c in table.columns) + " |" for r in table.rows
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def overlay_figure(runs: Sequence[RunInfo]) -> Figure:
    """Validation accuracy (left) and loss (right) per epoch, one colour per run; dashed vertical
    lines in the run's colour where its LR dropped. Solid lines: one per run per panel."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.5), layout="constrained")  # no pyplot: no global state, no backend
    axes = fig.subplots(1, 2)
    n = len(runs)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    any_drop = False
    for i, run in enumerate(runs):
        color = cmap(i if n <= 20 else i / max(n - 1, 1))
        epochs = [int(r["epoch"]) for r in run.history]
        drops = run.lr_drops()
        any_drop = any_drop or bool(drops)
        for ax, key in zip(axes, ("val_acc", "val_loss"), strict=True):
            ax.plot(epochs, [r[key] for r in run.history], "o-", ms=3, color=color, label=run.name)
            for e in drops:
                ax.axvline(e, color=color, linestyle="--", linewidth=1, alpha=0.7)
    for ax, title in zip(axes, ("validation accuracy", "validation loss"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles: list[Any] = [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "-"]
    if any_drop:
        handles.append(Line2D([], [], color="gray", linestyle="--", linewidth=1, label="LR drop"))
    fig.legend(handles=handles, loc="outside right upper", title="run")
    return fig


def plot_overlay(runs: Sequence[RunInfo], path: str | os.PathLike) -> Path:
    """overlay_figure() written atomically as PNG."""
    buf = io.BytesIO()
    overlay_figure(runs).savefig(buf, format="png", dpi=100)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
