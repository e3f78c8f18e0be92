"""`cvtool quantize`: static INT8 quantization of an ONNX classifier, without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import console, err_console, progress_bar
from cvtool.cli.options import OptionError, ThreadsOpt, VerboseOpt, card_options
from cvtool.onnxtools.quant_settings import ActivationType, CalibMethod, QuantFormatName


@card_options
def quantize(
    model: Annotated[Path, typer.Argument(help="A float32 ONNX classifier.")],
    calib: Annotated[Path, typer.Option(help="Calibration images: a folder, sub-folders included.")],
    card: dict[str, Any],
    calib_n: Annotated[int, typer.Option("--calib-n", min=1, help="Calibration images to sample.")] = 256,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="INT8 file (default: MODEL.int8.onnx).")
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(help="Image folder to compare INT8 with float32 on (class sub-folders = labeled)."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="id,label CSV that labels a flat --verify folder (id = file stem).")
    ] = None,
    quant_format: Annotated[QuantFormatName, typer.Option("--format", help="Graph format.")] = "qdq",
    activations: Annotated[ActivationType, typer.Option(help="Activation type.")] = "uint8",
    reduce_range: Annotated[
        bool,
        typer.Option("--reduce-range/--full-range", help="7-bit weights: no overflow on CPUs without VNNI."),
    ] = True,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="Weight scales per channel.")
    ] = True,
    method: Annotated[CalibMethod, typer.Option(help="Calibration method.")] = "minmax",
    bench: Annotated[
        bool, typer.Option("--bench/--no-bench", help="Measure float32 vs INT8 speed on the CPU.")
    ] = True,
    bench_batch: Annotated[int, typer.Option(min=1, help="Batch size for the speed measurement.")] = 32,
    threads: ThreadsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Quantize MODEL to INT8 (static QDQ), calibrated through the model card's preprocessing.

    --verify compares INT8 with float32 on real images; --bench measures both on the CPU (with
    --threads ONNX Runtime threads for both, and for --verify).
    """
    from cvtool.infer.compare import compare_files, compare_speed, verification_set
    from cvtool.onnxtools.card_edit import card_for_model, read_card
    from cvtool.onnxtools.model_file import load_onnx
    from cvtool.onnxtools.quantize import QuantSettings, calibration_files, quantize_model

    if labels is not None and verify is None:
        raise OptionError("--labels labels the --verify folder; pass --verify DIR too")
    settings = QuantSettings(quant_format, activations, reduce_range, per_channel, method)
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".int8.onnx")
    if output.resolve() == model.resolve():
        raise OptionError("--output must differ from MODEL (the float32 file is the reference)")
    # Resolve the card and check both folders before the (slow) calibration.
    proto = load_onnx(model)
    resolved = card_for_model(proto, card, model)
    if read_card(proto) is None and not card:
        err_console.print(f"warning: {model} carries no cvtool card; calibrating with default preprocessing")
    del proto
    verify_set = verification_set(verify, resolved.class_names, labels) if verify is not None else None
    files = calibration_files(calib, calib_n)
    with progress_bar() as progress:
        task = progress.add_task("calibrate", total=len(files))
        q = quantize_model(
            model, output, files, card, settings, on_progress=lambda n: progress.advance(task, n)
        )
    if verbose:
        console.print("card:")
        console.print(q.card.describe())
    console.print(
        f"wrote {output} ({q.bytes_in / 1e6:.1f} MB → {q.bytes_out / 1e6:.1f} MB): "
        f"{settings.describe()}, calibrated on {q.calibrated} images from {calib}"
    )
    failed = dict(q.failed)
    if verify_set is not None:
        with progress_bar() as progress:
            progress.add_task("verify", total=None)
            comp = compare_files(model, output, verify_set, overrides=card, threads=threads)
        console.print(f"INT8 vs float32 on {comp.describe('float32', 'INT8')}")
        failed.update(comp.failed)
    if bench:
        speed = compare_speed(model, output, bench_batch, overrides=card, threads=threads)
        console.print(speed.describe("float32", "INT8"))
    if failed:
        err_console.print(f"{len(failed)} image(s) could not be read and were left out:")
        for p, reason in list(failed.items())[:10]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)
