"""`cvtool quantize`: static INT8 quantization of an ONNX classifier, without torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from cvtool.cli.common import console, err_console, fail, progress_bar
from cvtool.cli.options import VerboseOpt, card_options


@card_options
def quantize(
    model: Path = typer.Argument(..., help="A float32 ONNX classifier."),
    calib: Path = typer.Option(..., help="Calibration images: a folder, sub-folders included."),
    calib_n: int = typer.Option(256, "--calib-n", min=1, help="Calibration images to sample."),
    output: Path | None = typer.Option(None, "--output", "-o", help="INT8 file [default: MODEL.int8.onnx]."),
    verify: Path | None = typer.Option(
        None, help="Image folder to compare INT8 with float32 on (class sub-folders = labeled)."
    ),
    labels: Path | None = typer.Option(None, help="id,label CSV that labels a flat --verify folder."),
    quant_format: str = typer.Option("qdq", "--format", help="qdq or qoperator."),
    activations: str = typer.Option("uint8", help="Activation type: uint8 or int8."),
    reduce_range: bool = typer.Option(
        True, "--reduce-range/--full-range", help="7-bit weights: no overflow on CPUs without VNNI."
    ),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Weight scales per channel."),
    method: str = typer.Option("minmax", help="Calibration: minmax, entropy or percentile."),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Measure float32 vs INT8 speed on the CPU."),
    bench_batch: int = typer.Option(32, min=1, help="Batch size for the speed measurement."),
    threads: int | None = typer.Option(
        None, min=1, help="CPU threads for the speed measurement [default: all]."
    ),
    card: dict[str, Any] | None = None,
    verbose: VerboseOpt = False,
) -> None:
    """Quantize MODEL to INT8 (static QDQ), calibrated through the model card's preprocessing."""
    from cvtool.data import DataError
    from cvtool.infer.compare import compare_predictions, throughput, verification_set
    from cvtool.infer.session import DeviceError, ModelError, open_model
    from cvtool.onnxtools.card_edit import card_for_model, read_card
    from cvtool.onnxtools.model_file import OnnxFileError, load_onnx
    from cvtool.onnxtools.quantize import QuantizeError, QuantSettings, calibration_files, quantize_model

    if labels is not None and verify is None:
        raise fail("--labels labels the --verify folder; pass --verify DIR too")
    try:
        settings = QuantSettings(quant_format, activations, reduce_range, per_channel, method)
    except ValueError as e:
        raise fail(str(e)) from None
    output = output or model.with_name(model.name.removesuffix(".onnx") + ".int8.onnx")
    if output.resolve() == model.resolve():
        raise fail("--output must differ from MODEL (the float32 file is the reference)")
    ov = card or {}
    try:
        # Resolve the card and check both folders before the (slow) calibration.
        proto = load_onnx(model)
        card = card_for_model(proto, ov, model)
        if read_card(proto) is None and not ov:
            err_console.print(
                f"warning: {model} carries no cvtool card; calibrating with default preprocessing"
            )
        verify_set = verification_set(verify, card.class_names, labels) if verify is not None else None
        files = calibration_files(calib, calib_n)
        del proto
        with progress_bar() as progress:
            task = progress.add_task("calibrate", total=len(files))
            q = quantize_model(
                model, output, files, ov, settings, on_progress=lambda n: progress.advance(task, n)
            )
    except (DataError, OnnxFileError, QuantizeError) as e:
        raise fail(str(e)) from None
    if verbose:
        console.print("card:")
        console.print(q["card"].describe())
    console.print(
        f"wrote {output} ({q['bytes_in'] / 1e6:.1f} MB → {q['bytes_out'] / 1e6:.1f} MB): "
        f"{settings.describe()}, calibrated on {q['calibrated']} images from {calib}"
    )
    failed = dict(q["failed"])
    try:
        if verify_set is not None or bench:
            n_threads = threads or os.cpu_count() or 1
            ref = open_model(model, device="cpu", overrides=ov, threads=n_threads)
            low = open_model(output, device="cpu", threads=n_threads)
        if verify_set is not None:
            with progress_bar() as progress:
                progress.add_task("verify", total=None)
                comp = compare_predictions(verify_set[0], card, ref.run, low.run, verify_set[1])
            console.print(f"INT8 vs float32 on {comp.describe('float32', 'INT8')}")
            failed.update(comp.failed)
        if bench:
            fps_ref = throughput(ref, bench_batch)
            fps_low = throughput(low, bench_batch)
            console.print(
                f"speed (CPU, batch {bench_batch}, {n_threads} threads): float32 {fps_ref:.1f} images/s, "
                f"INT8 {fps_low:.1f} images/s ({fps_low / fps_ref:.2f}×)"
            )
    except (DataError, DeviceError, ModelError) as e:
        raise fail(str(e)) from None
    if failed:
        err_console.print(f"{len(failed)} image(s) could not be read and were left out:")
        for p, reason in list(failed.items())[:10]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)
