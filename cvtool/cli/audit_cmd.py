"""`cvtool audit`: exact and near duplicate images within and across folders, and label conflicts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import console, err_console, progress_bar
from cvtool.cli.options import BatchOpt, DeviceOpt, WorkersOpt


def audit(
    dirs: Annotated[
        list[Path],
        typer.Argument(help="Folders to audit: class sub-folders (labels), or flat folders of images."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results.")] = Path("runs/audit"),
    labels: Annotated[
        list[Path] | None,
        typer.Option(
            help="id,label CSV (id = file stem or name) for a flat folder; repeat it for several, "
            "in the order the flat folders are given."
        ),
    ] = None,
    distance: Annotated[
        int,
        typer.Option(min=0, max=10, help="Near duplicates: most bits of the 64-bit pHash that may differ."),
    ] = 4,
    max_diff: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Near duplicates: most mean |difference| of the 8×8 grey thumbnails (0-255 levels).",
        ),
    ] = 3.0,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="ONNX model: also pair images by its penultimate features."),
    ] = None,
    similarity: Annotated[
        float,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="With --model: least cosine similarity of feature twins (a classifier's features "
            "group a class: on Fashion-MNIST 0.95 paired 89 % of the test images).",
        ),
    ] = 0.998,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write audit.html.")] = True,
) -> None:
    """Find duplicates within and across folders (train ↔ test leakage) and label conflicts."""
    from cvtool.evaluation.audit import audit as run_audit

    with progress_bar() as progress:
        task = progress.add_task("audit", total=None)
        r = run_audit(
            dirs, out, labels or [],
            distance=distance, max_diff=max_diff, model=model, similarity=similarity,
            device=device, batch_size=batch_size, workers=workers,
            on_start=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
            html=html,
        )  # fmt: skip
    for f in r.folders:
        console.print(f"{f.name}: {f.images} image(s)" + ("" if f.labeled else ", unlabeled"))
        for reason, n in f.skipped.items():
            console.print(f"  {reason}: {n}")
    for line in r.summary_lines():
        console.print(line)
    console.print(f"{len(r.groups)} group(s) in {r.seconds:.1f} s; results in {out}/: {', '.join(r.written)}")
    if r.unreadable:
        err_console.print(f"{len(r.unreadable)} image(s) could not be read; listed in {out}/unreadable.csv")
        raise typer.Exit(1)
