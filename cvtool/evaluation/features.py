"""A classifier's penultimate features from its ONNX file: the input of its last Gemm/MatMul.

The graph returns only its logits, so the features tensor is added as an output of an in-memory
copy (cvtool/onnxtools/layers.py), which runs on the same execution provider as the model. Images
go through the model card's own preprocessing (cvtool/decode.py), as in predict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.errors import CvtoolError

__all__ = ["FeatureError", "penultimate_features", "penultimate_tensor"]


class FeatureError(CvtoolError, ValueError):
    """The model has no linear last layer, or an image stopped decoding; the message says which."""


def penultimate_tensor(proto: Any) -> str:
    """The tensor a classifier's last Gemm/MatMul multiplies: its penultimate features."""
    inits = {i.name for i in proto.graph.initializer}
    for node in reversed(proto.graph.node):
        if node.op_type in ("Gemm", "MatMul") and node.input and node.input[0] not in inits:
            return str(node.input[0])
    raise FeatureError(
        "the model has no Gemm or MatMul layer; --model needs a classifier whose last layer is linear"
    )


def penultimate_features(
    model_path: str | os.PathLike, paths: list[Path], device: str, batch_size: int, workers: int | None
) -> np.ndarray:
    """(N, F) penultimate features of `paths`, through the model card's preprocessing."""
    import onnxruntime as ort

    from cvtool.decode import decode_batches
    from cvtool.infer.session import open_model, session_options
    from cvtool.onnxtools.layers import with_outputs
    from cvtool.onnxtools.model_file import load_onnx

    m = open_model(model_path, device=device)
    proto = load_onnx(model_path)
    try:
        tensor = penultimate_tensor(proto)
    except FeatureError as e:
        raise FeatureError(f"{model_path}: {e}") from None
    session = ort.InferenceSession(
        with_outputs(proto, [tensor]).SerializeToString(),
        sess_options=session_options(),
        providers=m.session.get_providers(),
    )
    fixed = m.fixed_batch
    feats: list[np.ndarray] = []
    for _, batch, failed in decode_batches(paths, m.card, fixed or batch_size, workers):
        if failed:  # it decoded for hashing a moment ago
            raise FeatureError(
                f"{next(iter(failed))}: {next(iter(failed.values()))} (while computing features)"
            )
        n = len(batch)
        if fixed and n < fixed:
            batch = np.concatenate([batch, np.zeros((fixed - n, *batch.shape[1:]), np.float32)])
        (out,) = session.run([tensor], {m.input_name: batch})
        feats.append(np.asarray(out, np.float32).reshape(len(batch), -1)[:n])
    return np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
