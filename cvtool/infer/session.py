"""ONNX Runtime sessions: provider choice, the model's card, and running a batch.

CUDA is asked for only when it can really load: the provider must be in this onnxruntime build,
an NVIDIA driver must be present with at least one device, and the CUDA runtime and cuDNN must be
loadable (onnxruntime's `preload_dlls` first loads the copies that torch or the nvidia-* wheels
installed). Otherwise ONNX Runtime would print a page of errors before falling back to the CPU.
`auto` therefore stays silent on machines without CUDA; `cuda` and `tensorrt` are strict and
raise DeviceError with the reason.

On CUDA and TensorRT, batches go through IO binding: the input is copied once into a device
buffer that is reused from batch to batch, and the output is allocated on the device and copied
back once, instead of ONNX Runtime allocating and copying both on every run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnxruntime as ort

from cvtool.contract import CARD_METADATA_KEY, CardError, ModelCard, resolve_card
from cvtool.errors import CvtoolError
from cvtool.softmax import softmax

__all__ = [
    "DEVICES",
    "DeviceError",
    "ModelError",
    "OnnxModel",
    "cuda_status",
    "default_batch_size",
    "open_model",
    "tensorrt_status",
]

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
DEVICES: tuple[str, ...] = get_args(Device)

# Tensors per model call when the user gives none: on the CPU a batch of 32 already gives every
# core whole convolutions to work on, and larger ones only cost memory; GPUs need more to fill up.
_DEFAULT_BATCH = {"CPUExecutionProvider": 32, "CUDAExecutionProvider": 128, "TensorrtExecutionProvider": 128}

# Where TensorRT keeps the engines it builds; building one takes minutes, loading it seconds.
TRT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cvtool" / "tensorrt"


class DeviceError(CvtoolError, RuntimeError):
    """The requested device cannot be used; the message says why."""


class ModelError(CvtoolError, ValueError):
    """The model file cannot be used as an image classifier; the message says why."""


def _load_lib(names: list[str]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from torch or the nvidia-* wheels, when there are any (best effort).

    preload_dlls prints a line per library it cannot find; those lines are noise here because
    the checks that follow decide, and say why.
    """
    if not hasattr(ort, "preload_dlls"):
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(Exception):
            ort.preload_dlls()


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
    _preload_cuda_libraries()
    if sys.platform != "win32":
        if not _load_lib(["libcudart.so.13", "libcudart.so.12", "libcudart.so"]):
            return False, "CUDA runtime (libcudart) not found: pip install 'cvtool[cuda]'"
        if not _load_lib(["libcudnn.so.9", "libcudnn.so"]):
            return False, "cuDNN 9 (libcudnn) not found: pip install 'cvtool[cuda]'"
    return True, f"{count.value} CUDA device(s)"


@lru_cache(maxsize=1)
def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): whether ONNX Runtime's TensorRT provider can really run here."""
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no TensorRT provider (install onnxruntime-gpu)"
    ok, reason = cuda_status()
    if not ok:
        return False, reason
    if sys.platform == "win32":
        return True, reason
    # The `tensorrt` wheel puts libnvinfer in site-packages/tensorrt_libs, off the loader's path.
    names = ["libnvinfer.so.10"]
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        names.insert(0, str(Path(next(iter(spec.submodule_search_locations))) / "libnvinfer.so.10"))
    if not _load_lib(names):
        return False, "TensorRT 10 (libnvinfer.so.10) not found: pip install tensorrt"
    return True, reason


def _providers(device: str, device_id: int = 0) -> list[Any]:
    """The provider list for `device`; DeviceError when a strict device cannot be used."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if device == "tensorrt":
        ok, reason = tensorrt_status()
        if not ok:
            raise DeviceError(f"--device tensorrt: TensorRT cannot be used: {reason}")
        trt = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(TRT_CACHE),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(TRT_CACHE),
        }
        # Nodes TensorRT cannot take run on CUDA, then the CPU.
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    ok, reason = cuda_status()
    if device == "cuda" and not ok:
        raise DeviceError(f"--device cuda: CUDA cannot be used: {reason}")
    return [cuda, "CPUExecutionProvider"] if ok else ["CPUExecutionProvider"]


def default_batch_size(provider: str) -> int:
    """Images per model call for a provider when the user gives none."""
    return _DEFAULT_BATCH.get(provider, 32)


def session_options(threads: int | None = None, spinning: bool | None = None) -> ort.SessionOptions:
    """Session options for batch inference.

    `threads`: ONNX Runtime's intra-op threads (default: its own choice, one per physical core).
    `spinning`: whether idle intra-op threads busy-wait for work. Off by default: between model
    calls the decoding threads need those cores, and spinning threads would take them. (On the
    loaded 2-core machine of bench/RESULTS.md neither setting was measurably faster.)
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
    allow = bool(spinning) if spinning is not None else False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow else "0")
    return opts


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
    # Device the IO binding places input and output on ("cuda"); None runs through session.run.
    bind_device: str | None = None
    device_id: int = 0
    # Pad every call to this many rows (TensorRT builds one engine per input shape).
    pad_to: int | None = None
    # Whether the pipeline may run batches on a copy of the session with fewer intra-op threads
    # (CPU, and no --threads given; see pipeline.model_threads).
    retunable: bool = False
    _bound_input: Any = field(default=None, repr=False)  # device buffer reused across calls
    _binding: Any = field(default=None, repr=False)
    _sessions_by_threads: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, C, H, W) float32 → (N, K) probabilities (a calibrated card's temperature applied).

        `threads`: run on a copy of the session with that many intra-op threads (opened on first
        use, then kept; only for a `retunable` model); None: on `session`.
        """
        out = self.outputs(batch, threads)
        if self.card.output != "logits":
            return out
        return softmax(out / np.float32(self.card.temperature) if self.card.calibration else out)

    def outputs(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, C, H, W) float32 → (N, K) raw outputs (logits); pads to a fixed batch size if needed."""
        n = len(batch)
        size = self.fixed_batch or self.pad_to
        if size is not None and n != size:
            outs = []
            for start in range(0, n, size):
                chunk = batch[start : start + size]
                pad = size - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                outs.append(self._run(chunk, threads)[: size - pad])
            return np.concatenate(outs)
        return self._run(batch, threads)

    def _session_with(self, threads: int) -> ort.InferenceSession:
        if threads not in self._sessions_by_threads:
            self._sessions_by_threads[threads] = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        return self._sessions_by_threads[threads]

    def _run(self, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.bind_device is not None:
            out = self._run_bound(batch)
        else:
            session = self._session_with(threads) if threads and self.retunable else self.session
            (out,) = session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        """One call through IO binding on `bind_device` (its API is the same for "cpu")."""
        if self._binding is None:
            self._binding = self.session.io_binding()
        if self._bound_input is None or list(self._bound_input.shape()) != list(batch.shape):
            # A new shape (first call, or a smaller last batch): allocate a device buffer once.
            self._bound_input = ort.OrtValue.ortvalue_from_shape_and_type(
                list(batch.shape), np.float32, self.bind_device, self.device_id
            )
            self._binding.bind_ortvalue_input(self.input_name, self._bound_input)
            # ONNX Runtime allocates the output on the device; its shape follows the input.
            self._binding.bind_output(self.output_name, self.bind_device, self.device_id)
        self._bound_input.update_inplace(batch)  # host → device copy into the same buffer
        self.session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0]


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def open_model(
    path: str | os.PathLike,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
    *,
    spinning: bool | None = None,
    device_id: int = 0,
    batch_size: int | None = None,
) -> OnnxModel:
    """Open an ONNX classifier and resolve its card (CLI overrides > file's card > defaults).

    `device`: auto (CUDA when it really loads, else CPU), cpu, cuda or tensorrt (strict: raise
    DeviceError with the reason). `batch_size` is the largest batch that will be run; TensorRT
    pads every call to it so one engine serves the whole run. The resolved card is checked against
    the graph by `resolve_card` (the check `card set` runs too): ModelError names the file when
    they disagree, before anything is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    providers = _providers(device, device_id)
    opts = session_options(threads, spinning)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise ModelError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from e
    used = session.get_providers()
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(device)
    if wanted and wanted not in used:
        raise DeviceError(
            f"--device {device}: ONNX Runtime could not start {wanted} (it fell back to {used[0]})"
        )

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
    on_gpu = used[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    return OnnxModel(
        path=path,
        session=session,
        card=card,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        fixed_batch=_dim(shape[0]),
        has_card=file_card is not None,
        bind_device="cuda" if on_gpu else None,
        device_id=device_id,
        pad_to=batch_size if used[0] == "TensorrtExecutionProvider" else None,
        retunable=used[0] == "CPUExecutionProvider" and threads is None,
    )
