"""`cvtool export`: the command line over cvtool.export (torch imported inside)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cvtool.cli.common import console, err_console, require_torch
from cvtool.cli.options import OptionError

if TYPE_CHECKING:
    from cvtool.export.onnx_export import Precision
    from cvtool.infer.compare import Comparison

_NAMES = {"fp32": "float32", "fp16": "float16", "int8": "INT8"}


def _parse_batch(batch: str) -> int | None:
    if batch.strip().lower() == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        n = 0
    if n < 1:
        raise OptionError(f"--batch takes 'dynamic' or a positive number, got {batch!r}")
    return n


def _show_verify(comp: Comparison) -> None:
    console.print(f"verify (PyTorch vs ONNX float32) on {comp.describe('PyTorch', 'ONNX')}")


def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="A cvtool checkpoint (best.pt / last.pt), a run folder, or a k-fold run folder."),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="ONNX file to write (a k-fold run: a folder for fold-<k>.onnx)."),
    ],
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
    batch: Annotated[str, typer.Option(help="Batch dimension: dynamic, or a fixed size N.")] = "dynamic",
    verify: Annotated[
        Path | None,
        typer.Option(
            help="Image folder to compare PyTorch and ONNX Runtime on (class sub-folders = labeled); "
            "exit 1 unless every top-1 agrees and |Δprob| ≤ --tolerance.",
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="id,label CSV that labels a flat --verify folder (id = file stem).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Max |Δprob| allowed between PyTorch and float32 ONNX.")
    ] = 1e-4,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Write float16 weights (float32 inputs/outputs), for GPUs.")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Write a statically quantized INT8 model (needs --calib).")
    ] = False,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration images for --int8 (sub-folders included).")
    ] = None,
    calib_n: Annotated[int, typer.Option("--calib-n", min=1, help="Calibration images to sample.")] = 256,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, the model card embedded), checked against PyTorch.

    With --fp16 or --int8 and --verify, the reduced-precision file is also compared with the
    float32 one on the same images (reported, not enforced).
    """
    require_torch()
    if fp16 and int8:
        raise OptionError("--fp16 and --int8 exclude each other")
    if int8 and calib is None:
        raise OptionError("--int8 needs calibration images: --calib DIR")
    if calib is not None and not int8:
        raise OptionError("--calib is only used with --int8")
    if labels is not None and verify is None:
        raise OptionError("--labels labels the --verify folder; pass --verify DIR too")
    precision: Precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    jobs = _jobs(checkpoint, output)
    failed: dict[Path, str] = {}
    for ckpt, out in jobs:
        if len(jobs) > 1:
            console.print(f"{ckpt}:")
        failed.update(
            _export_one(ckpt, out, opset, batch, precision, verify, labels, tolerance, calib, calib_n)
        )
    if failed:
        err_console.print(f"{len(failed)} calibration/verification image(s) could not be read:")
        for p, reason in list(failed.items())[:10]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)


def _jobs(checkpoint: Path, output: Path) -> list[tuple[Path, Path]]:
    """(checkpoint, ONNX file) pairs: one file, a run folder's best.pt, or every fold of a k-fold run."""
    from cvtool.train.folds import cv_config, fold_dir, is_cv_run

    if not checkpoint.is_dir():
        return [(checkpoint, output)]
    if is_cv_run(checkpoint):
        k = cv_config(checkpoint).folds or 0
        return [(fold_dir(checkpoint, i) / "best.pt", output / f"fold-{i}.onnx") for i in range(1, k + 1)]
    if (checkpoint / "best.pt").is_file():
        return [(checkpoint / "best.pt", output)]
    raise OptionError(
        f"{checkpoint}: neither a checkpoint nor a run folder (no best.pt, no k-fold config.json)"
    )


def _export_one(
    checkpoint: Path,
    output: Path,
    opset: int,
    batch: str,
    precision: Precision,
    verify: Path | None,
    labels: Path | None,
    tolerance: float,
    calib: Path | None,
    calib_n: int,
) -> dict[Path, str]:
    """Export one checkpoint and say what was written; returns the images that could not be read."""
    from cvtool.export.onnx_export import export_checkpoint
    from cvtool.export.verify import VerifyError

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
        # Show what disagreed; the handler prints the error and exits 1.
        if e.result.verify is not None:
            _show_verify(e.result.verify)
            for p in e.result.verify.disagreements[:10]:
                console.print(f"  top-1 differs: {p}")
        raise

    batch_text = "dynamic batch" if info.batch is None else f"fixed batch {info.batch}"
    console.print(
        f"wrote {info.path} ({_NAMES[precision]}, opset {info.opset}, {batch_text}, "
        f"{info.card.num_classes} classes, {info.bytes / 1e6:.1f} MB); random inputs: "
        f"max |Δprob| float32 vs PyTorch {info.max_abs_prob_diff:.1e}"
    )
    failed: dict[Path, str] = {}
    if info.quantize is not None:
        q = info.quantize
        console.print(f"quantized: {q.settings.describe()}, calibrated on {q.calibrated} images")
        failed.update(q.failed)
    if info.verify is not None:
        _show_verify(info.verify)
        failed.update(info.verify.failed)
    if info.reduced is not None:
        low = _NAMES[precision]
        console.print(f"{low} vs float32 on {info.reduced.describe('float32', low)}")
    return failed
