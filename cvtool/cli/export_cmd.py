"""`cvtool export`: the command line over cvtool.export (torch imported inside)."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import console, err_console, fail, require_torch


def _parse_batch(batch: str) -> int | None:
    if batch.strip().lower() == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        n = 0
    if n < 1:
        raise fail(f"--batch takes 'dynamic' or a positive number, got {batch!r}")
    return n


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def export(
    checkpoint: Path = typer.Argument(..., help="A cvtool checkpoint (best.pt / last.pt)."),
    output: Path = typer.Option(..., "--output", "-o", help="ONNX file to write."),
    opset: int = typer.Option(18, help="ONNX opset version."),
    batch: str = typer.Option("dynamic", help="Batch dimension: dynamic, or a fixed size N."),
    verify: Path | None = typer.Option(
        None,
        "--verify",
        help="Image folder to compare PyTorch and ONNX Runtime on (class sub-folders = labeled); "
        "exit 1 unless every top-1 agrees and |Δprob| ≤ --tolerance.",
    ),
    labels: Path | None = typer.Option(None, help="id,label CSV that labels a flat --verify folder."),
    tolerance: float = typer.Option(1e-4, help="Max |Δprob| allowed between PyTorch and float32 ONNX."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Write float16 weights (float32 inputs/outputs), for GPUs."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Write a statically quantized INT8 model (needs --calib)."
    ),
    calib: Path | None = typer.Option(None, help="Calibration images for --int8 (sub-folders included)."),
    calib_n: int = typer.Option(256, "--calib-n", min=1, help="Calibration images to sample."),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, the model card embedded), checked against PyTorch."""
    require_torch()
    from cvtool.data import DataError
    from cvtool.export.onnx_export import ExportError, export_checkpoint
    from cvtool.export.verify import VerifyError
    from cvtool.onnxtools.model_file import OnnxFileError
    from cvtool.onnxtools.quantize import QuantizeError
    from cvtool.train.checkpoint import CheckpointError

    if fp16 and int8:
        raise fail("--fp16 and --int8 exclude each other")
    if int8 and calib is None:
        raise fail("--int8 needs calibration images: --calib DIR")
    if calib is not None and not int8:
        raise fail("--calib is only used with --int8")
    if labels is not None and verify is None:
        raise fail("--labels labels the --verify folder; pass --verify DIR too")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    try:
        info = export_checkpoint(
            checkpoint,
            output,
            opset=opset,
            batch=_parse_batch(batch),
            precision=precision,
            verify_dir=verify,
            verify_labels=labels,
            tolerance=tolerance,
            calib_dir=calib,
            calib_n=calib_n,
            on_progress=lambda msg: err_console.print(msg),
        )
    except VerifyError as e:
        comp = e.summary["verify"]
        console.print(f"verify (PyTorch vs ONNX float32) on {comp.describe('PyTorch', 'ONNX')}")
        for p in comp.disagreements[:10]:
            console.print(f"  top-1 differs: {p}")
        raise fail(str(e) + "; nothing written", code=1) from None
    except (CheckpointError, ExportError, DataError, OnnxFileError, QuantizeError) as e:
        raise fail(str(e)) from None

    names = {"fp32": "float32", "fp16": "float16", "int8": "INT8"}
    batch_text = "dynamic batch" if info["batch"] is None else f"fixed batch {info['batch']}"
    console.print(
        f"wrote {info['path']} ({names[precision]}, opset {info['opset']}, {batch_text}, "
        f"{info['card'].num_classes} classes, {_mb(info['bytes'])}); random inputs: "
        f"max |Δprob| float32 vs PyTorch {info['max_abs_prob_diff']:.1e}"
    )
    failed: dict = {}
    if info["quantize"] is not None:
        q = info["quantize"]
        console.print(f"quantized: {q['settings'].describe()}, calibrated on {q['calibrated']} images")
        failed.update(q["failed"])
    if info["verify"] is not None:
        console.print(f"verify (PyTorch vs ONNX float32) on {info['verify'].describe('PyTorch', 'ONNX')}")
        failed.update(info["verify"].failed)
    if info["reduced"] is not None:
        low = names[precision]
        console.print(f"{low} vs float32 on {info['reduced'].describe('float32', low)}")
    if failed:
        err_console.print(f"{len(failed)} calibration/verification image(s) could not be read:")
        for p, reason in list(failed.items())[:10]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)
