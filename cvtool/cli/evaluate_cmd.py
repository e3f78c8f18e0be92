"""`cvtool evaluate`: metrics, figures, failure cases, occlusion maps and a report, without torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cvtool.cli.common import console, err_console, open_onnx, progress_bar
from cvtool.cli.explain_options import (
    BaselineOpt,
    CamLayerOpt,
    FaithfulnessOpt,
    FaithfulnessStepsOpt,
    StrideOpt,
    WindowOpt,
)
from cvtool.cli.options import (
    BatchOpt,
    DeviceOpt,
    VerboseOpt,
    WorkersOpt,
    card_options,
    label_options,
)
from cvtool.data import LabelSource, labeled_files


@card_options
@label_options
def evaluate(
    data: Annotated[
        Path | None,
        typer.Argument(help="DATA/<class>/<image>, or images labeled by --labels or --label-pattern."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="ONNX model file (without one: --oof RUN/oof.csv).")
    ] = None,
    *,
    card: dict[str, Any],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results.")] = Path("runs/eval"),
    labels: LabelSource = LabelSource(),
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    failures: Annotated[
        int,
        typer.Option(
            min=0,
            help="Copy the K highest-loss misclassified images to failures/ and "
            "draw top_losses.png (failures.csv always lists them all when K > 0).",
        ),
    ] = 0,
    occlusion: Annotated[
        int, typer.Option(min=0, help="Occlusion maps for the K worst failures and K random correct images.")
    ] = 0,
    cam: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Class activation maps (ReciproCAM) for the K worst failures and K random correct "
            "images [default: 5 when the model has a spatial feature map; 0: none].",
            show_default=False,
        ),
    ] = None,
    cam_layer: CamLayerOpt = None,
    faithfulness: FaithfulnessOpt = False,
    faithfulness_steps: FaithfulnessStepsOpt = 20,
    window: WindowOpt = None,
    stride: StrideOpt = None,
    baseline: BaselineOpt = "mean",
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for picking the random correct images.")] = 0,
    suspects: Annotated[
        int,
        typer.Option(
            min=0,
            help="Find suspected label errors (confident learning) and show the first K; "
            "suspects.csv lists them all.",
        ),
    ] = 0,
    oof: Annotated[
        Path | None,
        typer.Option(
            help="Out-of-fold CSV (train --folds): with --model, where --suspects looks; without, "
            "evaluate these cross-validation predictions themselves."
        ),
    ] = None,
    exclude_leaks: Annotated[
        Path | None,
        typer.Option(
            metavar="AUDIT_DIR",
            help="A cvtool audit folder of DATA and others: also report the metrics without the "
            "images that have a twin in another folder.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate on labeled images: metrics, confusion matrices, failures, CAMs, occlusion, report.html."""
    from cvtool.cli.options import OptionError
    from cvtool.evaluation.run import evaluate as run_evaluate

    if model is None and oof is None:
        raise OptionError("give --model (or --oof RUN/oof.csv to evaluate out-of-fold predictions)")
    if model is not None and oof is not None and suspects == 0:
        raise OptionError("--oof with --model is where --suspects looks: give --suspects K too")
    if model is None:
        r = run_evaluate(
            None, None, out, failures=failures, occlusion=occlusion, cam=cam,
            faithfulness=faithfulness, suspects=suspects, oof=oof, report=report,
        )  # fmt: skip
        _show(r, str(oof), out)
        return
    if data is None:
        raise OptionError("give the DATA folder to evaluate the model on")
    m = open_onnx(model, device, card, verbose)
    t_list = time.perf_counter()
    samples = labeled_files(data, m.card.class_names, labels)
    listing = time.perf_counter() - t_list
    with progress_bar() as progress:
        task = progress.add_task("evaluate", total=None)

        def on_task(description: str, total: int) -> Any:
            t = progress.add_task(description, total=total)
            return lambda n: progress.advance(t, n)

        r = run_evaluate(
            m, samples, out, None, batch_size, workers,
            on_start=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
            failures=failures, occlusion=occlusion, window=window, stride=stride,
            baseline=baseline, report=report, seed=seed, on_task=on_task,
            suspects=suspects, oof=oof, exclude_leaks=exclude_leaks,
            cam=cam, cam_layer=cam_layer, faithfulness=faithfulness, faithfulness_steps=faithfulness_steps,
        )  # fmt: skip

    _show(r, str(data), out)
    if verbose and r.times is not None:
        r.times.listing = listing
        r.times.total += listing
        console.print(r.times.describe("metrics, plots, maps and report"))
    console.print(f"labels: {samples.describe()}")
    for line in samples.notes():  # passed over: counted, the first few named
        console.print(f"  {line}")
    if r.unreadable:
        err_console.print(
            f"{len(r.unreadable)} image(s) could not be read and are excluded from the metrics; "
            f"listed in {out}/failed_images.csv"
        )
        raise typer.Exit(1)


def _show(r: Any, title: str, out: Path) -> None:
    """The per-class table, the headline metrics and what was written."""
    table = Table(title=f"{title} — {r.n} images")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in r.per_class.items():
        table.add_row(name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    table.add_section()
    for avg, a in (("macro", r.macro), ("weighted", r.weighted)):
        table.add_row(f"{avg} avg", f"{a.precision:.3f}", f"{a.recall:.3f}", f"{a.f1:.3f}", str(r.n))
    console.print(table)
    extra = [f"top-5 {r.top5_accuracy:.4f}"] if r.top5_accuracy is not None else []
    if r.log_loss is not None and r.expected_calibration_error is not None:
        extra += [f"log loss {r.log_loss:.4f}", f"ECE {r.expected_calibration_error:.4f}"]
    console.print(
        f"accuracy {r.accuracy:.4f}" + "".join(f", {e}" for e in extra) + f" on {r.n} images, "
        f"{r.images_per_s:.0f} images/s on {r.provider}"
    )
    if r.without_leaks is not None:
        w = r.without_leaks
        acc = "no image left" if w.accuracy is None else f"{w.accuracy:.4f}"
        console.print(
            f"accuracy {r.accuracy:.4f} ({acc} without the {w.excluded} leaked images: "
            + (", ".join(f"{n} {k}" for k, n in w.by_kind.items() if n) or "none")
            + f"; listed in {out}/leaked_images.csv)"
        )
    if r.cam is not None:
        console.print(
            f"class activation maps of {r.cam.images} image(s) at {r.cam.layer} ({r.cam.cells} cells)"
        )
    if r.faithfulness is not None:
        from cvtool.cli.explain_cmd import faithfulness_table
        from cvtool.evaluation.faithfulness import Faithfulness

        scored: list[tuple[str, list[Faithfulness]]] = [
            ("cam", [c.faithfulness for m in r.cam_maps for c in m.classes if c.faithfulness]),
            (
                "occlusion (drop in p)",
                [c.faithfulness for m in r.occlusion_maps for c in m.classes if c.faithfulness],
            ),
        ]
        f = r.faithfulness
        console.print(
            faithfulness_table(f"faithfulness, {f['steps']} steps, baseline {f['baseline']}", scored)
        )
    if r.suspects is not None:
        console.print(
            f"{len(r.suspects.suspects)} suspected label errors among {r.suspects.n} images "
            f"({r.suspects.source}); listed in {out}/suspects.csv"
        )
    console.print(f"{len(r.failures)} misclassified; most confused: " + (
        ", ".join(f"{t} → {p} ({n})" for t, p, n in r.most_confused[:3]) or "none"
    ))  # fmt: skip
    console.print(f"results in {out}/: {', '.join(r.files)}")
