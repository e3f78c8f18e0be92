"""Checkpoint → self-describing ONNX file, in float32, float16 or INT8.

The graph takes `input` (N, C, H, W) float32 with a dynamic batch (or a fixed one, `batch=N`) and
returns `logits` (N, K); the model card is stored as JSON under metadata_props["cvtool.card"].
Before anything is written the float32 graph passes onnx.checker's full check and ONNX Runtime is
compared with PyTorch on random batches (1 and 3, or the fixed batch), and, with `verify_dir`, on
real image files through the shared preprocessing (cvtool/export/verify.py). Float16 and INT8
files are derived from that verified float32 graph by the torch-free tools in cvtool.onnxtools.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import onnx
import torch

from cvtool.atomic import atomic_write_bytes
from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.onnxtools.card_edit import write_card
from cvtool.onnxtools.model_file import save_onnx
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

if TYPE_CHECKING:
    from cvtool.infer.compare import Comparison
    from cvtool.onnxtools.quantize import QuantizeResult, QuantSettings

__all__ = [
    "DEFAULT_OPSET",
    "PRECISIONS",
    "ExportError",
    "ExportResult",
    "Precision",
    "attach_card",
    "export_checkpoint",
    "export_onnx",
]

DEFAULT_OPSET = 18
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# ONNX Runtime vs PyTorch on random inputs, float32: max |Δprob| allowed before export fails.
RANDOM_CHECK_TOLERANCE = 1e-4

# Kept for callers of the first version; the card I/O now lives in cvtool.onnxtools.card_edit.
attach_card = write_card


class ExportError(CvtoolError, RuntimeError):
    """Export failed or produced a graph that disagrees with PyTorch."""


@dataclass
class ExportResult:
    """What export_checkpoint wrote and measured."""

    path: Path
    card: ModelCard  # the card in the file (fp16/int8: marked with the precision)
    opset: int
    batch: int | None  # None: dynamic
    precision: Precision
    max_abs_prob_diff: float  # float32 graph vs PyTorch on random inputs
    verify: Comparison | None = None  # float32 graph vs PyTorch on the verification images
    reduced: Comparison | None = None  # the fp16/int8 file vs float32 on those images
    quantize: QuantizeResult | None = None  # int8: how it was calibrated (path: the file written)
    bytes: int = 0  # size of the file written


def _torch_to_onnx(net: torch.nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(f),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                # Positional form: works whatever the forward argument is called.
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},) if dynamic else None,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        return onnx.load(str(f))


def export_onnx(
    net: torch.nn.Module, card: ModelCard, opset: int = DEFAULT_OPSET, batch: int | None = None
) -> tuple[onnx.ModelProto, float]:
    """Trace `net` (eval mode) to a checked ONNX graph carrying `card`; returns (model, max |Δprob|).

    `batch=None` gives a dynamic batch (traced with 2, so no size-1 specialisation sneaks in);
    `batch=N` a fixed one. Raises ExportError when export fails or ONNX Runtime disagrees with
    PyTorch on random inputs by more than 1e-4 in probability.
    """
    import onnxruntime as ort

    from cvtool.softmax import softmax

    if batch is not None and batch < 1:
        raise ExportError(f"batch must be ≥ 1, got {batch}")
    c, (h, w) = card.channels, card.input_size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(batch or 2, c, h, w, generator=gen)
    try:
        model = _torch_to_onnx(net, example, opset, dynamic=batch is None)
    except Exception as e:  # the exporter raises a wide variety of errors
        raise ExportError(
            f"ONNX export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    write_card(model, card)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph fails onnx.checker: {e}") from e
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    if (batch is None) != (not dim0.HasField("dim_value")) or (batch and dim0.dim_value != batch):
        raise ExportError(f"the exported batch dimension is {dim0} but {batch or 'dynamic'} was asked for")

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    max_delta = 0.0
    for n in (1, 3) if batch is None else (batch,):
        x = torch.randn(n, c, h, w, generator=gen)
        with torch.no_grad():
            ref = torch.softmax(net(x), dim=1).numpy()
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        max_delta = max(max_delta, float(np.abs(softmax(logits) - ref).max()))
    if not max_delta <= RANDOM_CHECK_TOLERANCE:  # also catches NaN
        raise ExportError(f"ONNX Runtime disagrees with PyTorch: max |Δprob| = {max_delta:.2e}")
    return model, max_delta


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    *,
    batch: int | None = None,
    precision: Precision = "fp32",
    verify_dir: str | os.PathLike | None = None,
    verify_labels: str | os.PathLike | None = None,
    tolerance: float = 1e-4,
    calib_dir: str | os.PathLike | None = None,
    calib_n: int = 256,
    quant_settings: QuantSettings | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a cvtool checkpoint to `out_path`.

    precision: "fp32"; "fp16" (float16 inside, float32 inputs/outputs, for GPUs); "int8" (static
    QDQ quantization calibrated on `calib_n` images from `calib_dir`, cvtool.onnxtools.quantize).
    With `verify_dir`, the float32 graph must agree with PyTorch on those images (top-1 on every
    image, max |Δprob| ≤ `tolerance`) or VerifyError is raised and nothing is written; a float16
    or INT8 file is then compared with the float32 one on the same images (reported, not enforced).
    """
    from cvtool.export.verify import VerifyError, verify_against_torch
    from cvtool.infer.compare import compare_files, verification_set
    from cvtool.onnxtools.quantize import calibration_files, quantize_model

    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calib_dir is None:
        raise ExportError("INT8 export needs calibration images (calib_dir)")
    say = on_progress or (lambda _msg: None)
    out_path = Path(out_path)
    ckpt = load_checkpoint(ckpt_path)
    net, card = model_from_checkpoint(ckpt)
    # Fail on unusable folders before the (slow) export.
    verify_set = verification_set(verify_dir, card.class_names, verify_labels) if verify_dir else None
    calib = calibration_files(calib_dir, calib_n) if calib_dir is not None and precision == "int8" else []
    model, max_delta = export_onnx(net, card, opset, batch)
    result = ExportResult(out_path, card, opset, batch, precision, max_delta)
    with tempfile.TemporaryDirectory(prefix="cvtool-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        save_onnx(model, fp32_path)
        if verify_set is not None:
            say(f"verifying the float32 graph against PyTorch on {len(verify_set[0])} images")
            comp = result.verify = verify_against_torch(net, fp32_path, card, *verify_set)
            if comp.agreement < 1.0 or not comp.max_abs_diff <= tolerance:
                raise VerifyError(
                    f"ONNX Runtime disagrees with PyTorch on {verify_dir}: top-1 agreement "
                    f"{comp.agreement:.2%}, max |Δprob| {comp.max_abs_diff:.2e} (tolerance {tolerance:g}); "
                    "nothing written",
                    result,
                )
        if precision == "fp32":
            result.bytes = save_onnx(model, out_path)
            return result

        from cvtool.infer.session import open_model

        reduced_path = Path(tmp) / f"{precision}.onnx"
        if precision == "fp16":
            from cvtool.onnxtools.fp16 import to_fp16

            half = to_fp16(model)
            card16 = dataclasses.replace(card, extra={**card.extra, "precision": "fp16"})
            write_card(half, card16)
            result.card = card16
            try:
                onnx.checker.check_model(half, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
                raise ExportError(f"the float16 graph fails onnx.checker: {e}") from e
            save_onnx(half, reduced_path)
        else:
            say(f"calibrating INT8 on {len(calib)} images from {calib_dir}")
            q = quantize_model(fp32_path, reduced_path, calib, settings=quant_settings)
            result.quantize, result.card = dataclasses.replace(q, path=out_path), q.card
        low = open_model(reduced_path, device="cpu")
        x = np.random.default_rng(0).normal(size=(batch or 3, card.channels, *card.input_size))
        x = x.astype(np.float32)
        probs = low.run(x)
        if not np.isfinite(probs).all():
            raise ExportError(f"the {precision} graph produces non-finite outputs (overflow)")
        if verify_set is not None:
            say(f"comparing {precision} with float32 on {len(verify_set[0])} images")
            result.reduced = compare_files(fp32_path, reduced_path, verify_set)
        data = reduced_path.read_bytes()
    atomic_write_bytes(out_path, data)
    result.bytes = len(data)
    return result
