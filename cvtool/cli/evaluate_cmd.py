"""`cvtool evaluate`: metrics and figures on labeled images, without torch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cvtool.cli.common import (
    BatchOpt,
    ChannelsOpt,
    ClassesOpt,
    DeviceOpt,
    InterpOpt,
    MeanOpt,
    ModelOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    VerboseOpt,
    app,
    card_overrides,
    console,
    err_console,
    fail,
    open_onnx,
    progress_bar,
)


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="ImageFolder tree, or a flat folder with --labels."),
    model: Path = ModelOpt,
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Folder for the results."),
    labels: Path | None = typer.Option(None, help="id,label CSV for a flat folder."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    workers: int | None = typer.Option(None, help="Decoding threads."),
    classes: str | None = ClassesOpt,
    size: str | None = SizeOpt,
    channels: int | None = ChannelsOpt,
    mean: str | None = MeanOpt,
    std: str | None = StdOpt,
    resize: str | None = ResizeOpt,
    interpolation: str | None = InterpOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Evaluate on labeled images: metrics.json, per_image.csv, confusion matrices."""
    from cvtool.data import DataError
    from cvtool.evaluate.run import evaluate as run_evaluate

    ov = card_overrides(classes, size, channels, mean, std, resize, interpolation)
    m = open_onnx(model, device, ov, verbose)
    with progress_bar() as progress:
        task = progress.add_task("evaluate", total=None)
        try:
            r = run_evaluate(
                m, data, out, labels, batch_size, workers,
                on_start=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )  # fmt: skip
        except DataError as e:
            raise fail(str(e)) from None

    table = Table(title=f"{data} — {r['n']} images")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in r["per_class"].items():
        table.add_row(
            name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])
        )
    table.add_section()
    for avg in ("macro", "weighted"):
        a = r[avg]
        table.add_row(
            f"{avg} avg", f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['f1']:.3f}", str(r["n"])
        )
    console.print(table)
    console.print(
        f"accuracy {r['accuracy']:.4f} on {r['n']} images, {r['images_per_s']:.0f} images/s on "
        f"{r['provider']}; results in {out}/ (metrics.json, per_image.csv, confusion_matrix.png)"
    )
    for reason, n in sorted(r["skipped_files"].items()):
        console.print(f"skipped {n} file(s): {reason}")
    if r["failed"]:
        err_console.print(
            f"{len(r['failed'])} image(s) could not be read and are excluded from the metrics; "
            f"listed in {out}/failed_images.csv",
            soft_wrap=True,
        )
        raise typer.Exit(1)
