"""How to quantize: the settings of `cvtool quantize` and `export --int8`, without onnx imported.

The command line reads these choices when it starts, before any command runs; onnx and ONNX
Runtime's quantizer are imported by cvtool.onnxtools.quantize only when a model is quantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from cvtool.errors import CvtoolError

__all__ = ["ActivationType", "CalibMethod", "QuantFormatName", "QuantSettings", "QuantizeError"]

QuantFormatName = Literal["qdq", "qoperator"]
ActivationType = Literal["uint8", "int8"]
CalibMethod = Literal["minmax", "entropy", "percentile"]
FORMATS: tuple[str, ...] = get_args(QuantFormatName)
ACTIVATIONS: tuple[str, ...] = get_args(ActivationType)
METHODS: tuple[str, ...] = get_args(CalibMethod)


class QuantizeError(CvtoolError, RuntimeError):
    """Quantization could not be done; the message says why."""


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize; the defaults are the measured choice (cvtool.onnxtools.quantize says why)."""

    format: QuantFormatName = "qdq"
    activations: ActivationType = "uint8"
    reduce_range: bool = True
    per_channel: bool = True
    method: CalibMethod = "minmax"

    def __post_init__(self) -> None:
        for name, allowed in (("format", FORMATS), ("activations", ACTIVATIONS), ("method", METHODS)):
            if getattr(self, name) not in allowed:
                raise QuantizeError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )

    def describe(self) -> str:
        weights = "int8 " + ("per-channel" if self.per_channel else "per-tensor") + " weights"
        return (
            f"{self.format.upper() if self.format == 'qdq' else 'QOperator'}, {self.activations} "
            f"activations, {weights}{' (reduced range)' if self.reduce_range else ''}, "
            f"{self.method} calibration"
        )
