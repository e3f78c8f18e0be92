"""`cvtool evaluate`: metrics, figures, failure cases, occlusion maps and a report, without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cvtool.cli.common import console, err_console, fail, open_onnx, progress_bar
from cvtool.cli.options import BatchOpt, DeviceOpt, ModelOpt, VerboseOpt, card_options

# Occlusion options, shared with `cvtool occlusion`.
WindowOpt = typer.Option(
    None, "--window", min=1, help="Occlusion window side in input pixels [default: 7, 1/8 of larger inputs]."
)
StrideOpt = typer.Option(None, "--stride", min=1, help="Occlusion window step [default: half the window].")
BaselineOpt = typer.Option(
    "mean",
    "--baseline",
    help="What the window shows: mean (training mean colour), zero (black) or blur (blurred image).",
)


@card_options
def evaluate(
    data: Path = typer.Argument(..., help="ImageFolder tree, or a flat folder with --labels."),
    model: ModelOpt = ...,  # type: ignore[assignment]
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Folder for the results."),
    labels: Path | None = typer.Option(None, help="id,label CSV for a flat folder."),
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    workers: int | None = typer.Option(None, help="Decoding threads."),
    card: dict[str, Any] | None = None,
    failures: int = typer.Option(
        0,
        "--failures",
        min=0,
        help="Copy the K highest-loss misclassified images to failures/ and "
        "draw top_losses.png (failures.csv always lists them all when K > 0).",
    ),
    occlusion: int = typer.Option(
        0,
        "--occlusion",
        min=0,
        help="Occlusion maps for the K worst failures and K random correct images.",
    ),
    window: int | None = WindowOpt,
    stride: int | None = StrideOpt,
    baseline: str = BaselineOpt,
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    seed: int = typer.Option(0, help="Seed for picking the random correct images."),
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate on labeled images: metrics, confusion matrices, failures, occlusion, report.html."""
    from cvtool.data import DataError
    from cvtool.evaluate.occlusion import BASELINES, default_window
    from cvtool.evaluate.run import evaluate as run_evaluate

    if baseline not in BASELINES:
        raise fail(f"--baseline must be one of {', '.join(BASELINES)}")
    ov = card or {}
    m = open_onnx(model, device, ov, verbose)
    if window is not None and window > min(m.card.input_size):
        raise fail(f"--window {window} is larger than the model input {m.card.input_size}")
    effective = window or default_window(m.card.input_size)
    if stride is not None and stride > effective:
        raise fail(f"--stride {stride} must not exceed the window {effective} (pixels would go uncovered)")
    with progress_bar() as progress:
        task = progress.add_task("evaluate", total=None)

        def on_task(description: str, total: int):
            t = progress.add_task(description, total=total)
            return lambda n: progress.advance(t, n)

        try:
            r = run_evaluate(
                m, data, out, labels, batch_size, workers,
                on_start=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
                failures=failures, occlusion=occlusion, window=window, stride=stride,
                baseline=baseline, report=report, seed=seed, on_task=on_task,
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
    extra = [f"top-5 {r['top5_accuracy']:.4f}"] if "top5_accuracy" in r else []
    if "log_loss" in r:
        extra += [f"log loss {r['log_loss']:.4f}", f"ECE {r['expected_calibration_error']:.4f}"]
    console.print(
        f"accuracy {r['accuracy']:.4f}" + "".join(f", {e}" for e in extra) + f" on {r['n']} images, "
        f"{r['images_per_s']:.0f} images/s on {r['provider']}"
    )
    wrong = len(r["failures"])
    console.print(f"{wrong} misclassified; most confused: " + (
        ", ".join(f"{t} → {p} ({n})" for t, p, n in r["most_confused"][:3]) or "none"
    ))  # fmt: skip
    written = r["files"]
    console.print(f"results in {out}/: {', '.join(written)}")
    for reason, n in sorted(r["skipped_files"].items()):
        console.print(f"skipped {n} file(s): {reason}")
    if r["failed"]:
        err_console.print(
            f"{len(r['failed'])} image(s) could not be read and are excluded from the metrics; "
            f"listed in {out}/failed_images.csv",
            soft_wrap=True,
        )
        raise typer.Exit(1)
