"""Static INT8 quantization with ONNX Runtime, calibrated through the card's own preprocessing.

Calibration images are decoded and preprocessed exactly as predict does (`cvtool.images` via the
threaded pipeline), so the activation ranges are those the model meets in use. The result keeps
the card (marked `precision: int8`) and runs wherever ONNX Runtime runs, without PyTorch.

Default settings, chosen by measurement (bench/export_int8.py; numbers in bench/RESULTS.md, taken
on a 2-core AMD EPYC with AVX-512 VNNI, partly under load from other jobs):

- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops): ONNX Runtime fuses them
  into integer kernels on the CPU, and other runtimes (TensorRT, OpenVINO) read the same file.
  QOperator (QLinearConv …) was not consistently faster (0.9× to 1.7× the QDQ speed over three
  runs) and ties the file to ONNX Runtime's contrib ops.
- uint8 activations (asymmetric), int8 weights (symmetric) per output channel: ONNX Runtime's x86
  integer kernels multiply u8 × s8. With its default int8 activations, ResNet-18 at 224² ran 1.0×
  to 1.5× float32; with uint8 activations 2.6× to 4×. Per-channel weight scales showed no
  consistent speed cost and keep layers with small filters accurate.
- reduce_range (7-bit weights): on x86 CPUs without VNNI (AVX2 only, most laptops), the u8 × s8
  kernel adds pairs of products into 16 bits, which saturates with full-range weights; 7-bit
  weights cannot. On this VNNI CPU it showed no consistent speed cost, and on Fashion-MNIST it
  cost 0.05 points of top-1 (5 of 10,000 images) against full range, within the 0.3-point
  budget, so the file is made safe for every CPU it may be carried to.
- MinMax calibration over `--calib-n` (256) images; entropy and percentile are available.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cvtool.contract import ModelCard
from cvtool.data import DataError, list_images
from cvtool.decode import decode_batches
from cvtool.onnxtools.card_edit import card_for_model, read_card, write_card
from cvtool.onnxtools.model_file import OnnxFileError, graph_io, load_onnx, save_onnx
from cvtool.onnxtools.quant_settings import (
    ActivationType,
    CalibMethod,
    QuantFormatName,
    QuantizeError,
    QuantSettings,
)

__all__ = [
    "ActivationType",
    "CalibMethod",
    "QuantFormatName",
    "QuantizeError",
    "QuantizeResult",
    "QuantSettings",
    "calibration_files",
    "quantize_model",
]

@dataclass
class QuantizeResult:
    """What quantize_model wrote and how it was calibrated."""

    path: Path
    card: ModelCard  # the card written into the result (marked precision: int8)
    had_card: bool  # whether the input file carried a card
    settings: QuantSettings
    calibrated: int  # images used for calibration
    failed: dict[Path, str]  # calibration file → why it could not be read
    bytes_in: int
    bytes_out: int


def calibration_files(data: str | os.PathLike, n: int = 256, seed: int = 0) -> list[Path]:
    """A seeded random sample of `n` images from DATA and its sub-folders (all when fewer).

    Random rather than the first n, so an ImageFolder tree contributes every class.
    """
    files = list_images(data, recursive=True).files
    if not files:
        raise DataError(f"{data}: no image files found for calibration")
    return random.Random(seed).sample(files, min(n, len(files)))


class _Reader:
    """ONNX Runtime CalibrationDataReader over decoded, preprocessed image batches."""

    def __init__(
        self,
        files: Sequence[Path],
        card: ModelCard,
        input_name: str,
        batch_size: int,
        fixed_batch: int | None,
        on_progress: Callable[[int], None] | None,
    ):
        self._batches = decode_batches(files, card, fixed_batch or batch_size)
        self._input, self._fixed, self._progress = input_name, fixed_batch, on_progress
        self.used = 0
        self.failed: dict[Path, str] = {}

    def get_next(self) -> dict[str, np.ndarray] | None:
        for paths, batch, failed in self._batches:
            self.failed.update(failed)
            if self._progress:
                self._progress(len(paths) + len(failed))
            if not len(batch):
                continue
            self.used += len(batch)
            if self._fixed and len(batch) != self._fixed:
                # A fixed-batch model takes only full batches: repeat images, which leaves the
                # observed activation ranges unchanged.
                batch = batch[np.arange(self._fixed) % len(batch)]
            return {self._input: batch}
        return None


def _check_float32(model: onnx.ModelProto, path: Path) -> None:
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"}:
        raise QuantizeError(f"{path}: the model is already quantized")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise QuantizeError(f"{path}: the model has float16 weights; quantize the float32 file")


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-pass (shape inference, BatchNorm folding, …).

    Symbolic shape inference fails on some foreign graphs; then ONNX's own shape inference is used,
    and when that fails too the model is quantized as it is.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for kwargs in ({}, {"skip_symbolic_shape": True}):
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return dst
        except Exception:  # noqa: BLE001 - any failure here only means "skip the pre-pass"
            continue
    return src


def quantize_model(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib: Sequence[Path],
    overrides: Mapping[str, Any] | None = None,
    settings: QuantSettings | None = None,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """Quantize the float32 model at `model_path` to INT8, calibrated on the image files `calib`.

    The card used for calibration is resolved as for predict (overrides > the file's card >
    defaults) and written into the result.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = settings or QuantSettings()
    model_path, out_path = Path(model_path), Path(out_path)
    model = load_onnx(model_path)
    card = card_for_model(model, overrides, model_path)
    io = graph_io(model, model_path)
    _check_float32(model, model_path)
    if not calib:
        raise DataError("no calibration images")
    reader = _Reader(calib, card, io.input_name, batch_size, io.batch, on_progress)
    with tempfile.TemporaryDirectory(prefix="cvtool-quantize-") as tmp:
        pre = _preprocess(model_path, Path(tmp) / "pre.onnx")
        q_path = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(pre),
                str(q_path),
                reader,
                quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[settings.method],
                # MinMax folds every 16 batches of activations into running ranges, so memory
                # stays bounded whatever --calib-n is.
                extra_options={"CalibMaxIntermediateOutputs": 16} if settings.method == "minmax" else {},
            )
        except Exception as e:  # onnxruntime raises ValueError/RuntimeError/its own types
            if reader.used == 0:
                first = next(iter(reader.failed.items()), None)
                why = f" (e.g. {first[0]}: {first[1]})" if first else ""
                raise QuantizeError(f"none of the {len(calib)} calibration images could be read{why}") from e
            raise QuantizeError(f"{model_path}: quantization failed: {str(e).splitlines()[0]}") from e
        quantized = onnx.load(str(q_path))
    # The pre-pass imports every domain ONNX Runtime knows; keep those the graph uses.
    used = {n.domain for n in quantized.graph.node} | {""}
    for op in [o for o in quantized.opset_import if o.domain not in used]:
        quantized.opset_import.remove(op)
    # The quantizer keeps the graph but not always the file's metadata: carry it over, then the card.
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    extra = {**card.extra, "precision": "int8", "quantization": settings.describe()}
    card = dataclasses.replace(card, extra=extra)
    write_card(quantized, card)
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as e:
        raise OnnxFileError(f"{out_path}: the quantized graph fails onnx.checker: {e}") from e
    size = save_onnx(quantized, out_path)
    return QuantizeResult(
        path=out_path,
        card=card,
        had_card=read_card(model) is not None,
        settings=settings,
        calibrated=reader.used,
        failed=reader.failed,
        bytes_in=model_path.stat().st_size,
        bytes_out=size,
    )
