"""ONNX Runtime sessions: provider choice, the model's card, and running a batch.

CUDA is asked for only when it can really load: the provider must be in this onnxruntime build,
an NVIDIA driver must be present with at least one device, and the CUDA runtime and cuDNN must be
loadable. Otherwise ONNX Runtime would print a page of errors before falling back to the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cvtool.contract import CARD_METADATA_KEY, CardError, ModelCard, resolve_card

__all__ = ["DeviceError", "ModelError", "OnnxModel", "cuda_status", "open_model", "softmax"]

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says why."""


class ModelError(ValueError):
    """The model file cannot be used as an image classifier; the message says why."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable (max subtracted). (N, K) → (N, K) float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _load_lib(names: list[str]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


@lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether ONNX Runtime's CUDA provider can really run here."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    driver = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        libcuda = ctypes.CDLL(driver)
    except OSError:
        return False, "no NVIDIA driver found"
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False, "the NVIDIA driver reports an error (cuInit failed)"
    if count.value < 1:
        return False, "no CUDA device visible"
    # Reuse CUDA/cuDNN libraries installed by torch or nvidia-* wheels, when there are any.
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - best effort; the checks below decide
            pass
    if sys.platform != "win32":
        if not _load_lib(["libcudart.so.13", "libcudart.so.12", "libcudart.so"]):
            return False, "CUDA runtime (libcudart) not found: pip install 'cvtool[cuda]'"
        if not _load_lib(["libcudnn.so.9", "libcudnn.so"]):
            return False, "cuDNN 9 (libcudnn) not found: pip install 'cvtool[cuda]'"
    return True, f"{count.value} CUDA device(s)"


def _providers(device: str) -> list[Any]:
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    ok, reason = cuda_status()
    if device == "cuda" and not ok:
        raise DeviceError(f"--device cuda: CUDA cannot be used: {reason}")
    if ok:
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OnnxModel:
    """An ONNX classifier with its resolved card."""

    path: Path
    session: ort.InferenceSession
    card: ModelCard
    input_name: str
    output_name: str
    fixed_batch: int | None  # None when the batch dimension is dynamic
    has_card: bool  # whether the file itself carried a card

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 → (N, K) probabilities; pads to a fixed batch size if needed."""
        n = len(batch)
        if self.fixed_batch is not None and n != self.fixed_batch:
            outs = []
            for start in range(0, n, self.fixed_batch):
                chunk = batch[start : start + self.fixed_batch]
                pad = self.fixed_batch - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                outs.append(self._run(chunk)[: self.fixed_batch - pad])
            return np.concatenate(outs)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        out = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
        return softmax(out) if self.card.output == "logits" else out


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def open_model(
    path: str | os.PathLike,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> OnnxModel:
    """Open an ONNX classifier and resolve its card (CLI overrides > file's card > defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    providers = _providers(device)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise ModelError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from e

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelError(f"{path}: the model has {len(inputs)} inputs {names}; expected one image")
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(f"{path}: input {inputs[0].name!r} has shape {shape}; expected (N, C, H, W)")
    channels = _dim(shape[1])
    if channels is not None and channels not in (1, 3):
        hint = " (it looks channels-last, NHWC)" if shape[3] in (1, 3) else ""
        raise ModelError(f"{path}: input takes {channels} channels; cvtool feeds 1 or 3{hint}")
    out_shape = outputs[0].shape
    num_outputs = _dim(out_shape[-1]) if out_shape else None

    meta = session.get_modelmeta().custom_metadata_map
    file_card = None
    if CARD_METADATA_KEY in meta:
        try:
            file_card = ModelCard.from_json(meta[CARD_METADATA_KEY])
        except CardError as e:
            raise ModelError(f"{path}: {e}") from e
    try:
        card = resolve_card(
            file_card,
            overrides,
            num_outputs=num_outputs,
            input_channels=channels,
            input_hw=(_dim(shape[2]), _dim(shape[3])),
        )
    except CardError as e:
        raise ModelError(f"{path}: {e}") from e
    return OnnxModel(
        path=path,
        session=session,
        card=card,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        fixed_batch=_dim(shape[0]),
        has_card=file_card is not None,
    )
