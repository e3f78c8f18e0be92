"""Class activation maps from the ONNX file alone, gradient-free: ReciproCAM (Byun & Lee, 2022).

The graph is split at its last spatial feature map (`cvtool.onnxtools.split`). The backbone runs
once per image and returns the logits and the (C, h, w) map; then the head runs on h·w copies of
the map, copy (i, j) keeping only cell (i, j) (every other cell zero), batched on ONNX Runtime.
The softmax probability of the target class in copy (i, j) is the map's value at (i, j): how
much that cell alone makes the model say "target". Per image and class the h×w map is then
min-max normalised to [0, 1] (OpenVINO XAI's normalisation, in float here) and up-sampled
bilinearly (half-pixel centres, like OpenCV and torch's align_corners=False) to the input size.

For a head that is global average pooling + a linear layer, copy (i, j)'s logit for class c is
Σ_k w_ck · f_k(i, j) / (h·w) + b_c: classic CAM (Zhou et al., 2016), scaled, plus the bias.
`CamResult.cell_logits` keeps those logits before softmax and normalisation.

`cam_maps` maps a list of images and writes their figures, maps and cam.csv; both
`cvtool cam` and `cvtool evaluate --cam` use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from cvtool.atomic import atomic_write
from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.evaluation.faithfulness import (
    FAITHFULNESS_CSV_HEADER,
    Faithfulness,
    FaithfulnessSettings,
    faithfulness,
)
from cvtool.evaluation.occlusion import MapRequest, baseline_for, check_baseline, default_window, load_input
from cvtool.evaluation.outputs import relocated, safe_filename, write_csv
from cvtool.images import ImageError
from cvtool.infer.session import OnnxModel, session_options
from cvtool.onnxtools.model_file import load_onnx
from cvtool.onnxtools.split import FeatureMap, split_model
from cvtool.softmax import softmax

__all__ = [
    "CAM_CSV_HEADER",
    "CamClass",
    "CamError",
    "CamImage",
    "CamModel",
    "CamResult",
    "FaithfulnessSettings",
    "cam_maps",
    "normalize_map",
    "open_cam",
    "upsample_bilinear",
]

CAM_CSV_HEADER = [
    "name",
    "path",
    "target",
    "p_original",
    "p_cell_max",
    "p_cell_min",
    "peak_row",
    "peak_col",
    "layer",
    "cells",
    "png",
    "npy",
]


class CamError(CvtoolError, ValueError):
    """A class activation map cannot be computed (no feature map, a head that does not run)."""


def normalize_map(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float64); a constant map becomes all zeros (nothing stands out)."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Output pixel o samples the input at (o + 0.5) · n_in / n_out - 0.5, clamped to the edge cells.
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def upsample_bilinear(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) → (H, W) bilinear with half-pixel centres (torch's align_corners=False, OpenCV's
    INTER_LINEAR): each output value is a convex mix of its neighbour cells, so [0, 1] stays [0, 1]."""
    m = np.asarray(m, dtype=np.float64)
    (y0, y1, fy), (x0, x1, fx) = _axis_weights(m.shape[0], size[0]), _axis_weights(m.shape[1], size[1])
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]  # (H, w)
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


@dataclass
class CamResult:
    """One image's ReciproCAM: the model's own output and the head's output per kept cell."""

    logits: np.ndarray  # (K,) logits of the image
    cell_logits: np.ndarray  # (h, w, K) head logits with only cell (i, j) of the feature map kept
    size: tuple[int, int]  # (H, W) of the model input
    temperature: float = 1.0  # a calibrated card's: logits / T before the softmax, as predict does

    @property
    def p0(self) -> np.ndarray:
        """(K,) probabilities of the image."""
        return softmax(self.logits[None] / np.float32(self.temperature))[0]

    def cell_probs(self, k: int) -> np.ndarray:
        """(h, w) float64: p(class k) from each cell alone (the raw map)."""
        h, w, n = self.cell_logits.shape
        z = self.cell_logits.reshape(h * w, n) / np.float32(self.temperature)
        return softmax(z)[:, k].reshape(h, w).astype(np.float64)

    def pixel_map(self, k: int) -> np.ndarray:
        """(H, W) float32 in [0, 1]: the min-max normalised map of class k, up-sampled bilinearly."""
        return upsample_bilinear(normalize_map(self.cell_probs(k)), self.size).astype(np.float32)


def _providers(model: OnnxModel) -> tuple[list[str], list[dict[str, str]]]:
    # TensorRT builds an engine per input shape; the two small graphs here run on CUDA instead.
    providers = [p for p in model.session.get_providers() if p != "TensorrtExecutionProvider"]
    options = model.session.get_provider_options()
    return providers, [options.get(p, {}) for p in providers]


@dataclass
class CamModel:
    """A classifier split at a feature map: the backbone and head sessions, with the model itself."""

    model: OnnxModel
    point: FeatureMap
    backbone: ort.InferenceSession
    head: ort.InferenceSession
    logits_name: str
    fixed_batch: int | None  # the graph's fixed batch size, fed padded batches (both parts)

    @property
    def card(self) -> ModelCard:
        return self.model.card

    def describe(self) -> str:
        """The split point in words, e.g. 'layer4.1.relu (tensor relu_16, 512×4×4): 16 cells'."""
        return f"{self.point.describe()}: {self.point.cells} cells"

    def _run(
        self, session: ort.InferenceSession, name: str, x: np.ndarray, outputs: list[str]
    ) -> list[np.ndarray]:
        n = len(x)
        if self.fixed_batch and n < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), x.dtype)])
        try:
            values = session.run(outputs, {name: x})
        except Exception as e:  # onnxruntime raises its own exception types
            part = "backbone" if session is self.backbone else "head"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CamError(
                f"{self.model.path}: the {part} of the split at {self.point.tensor} fails to run ({first})"
            ) from e
        return [np.asarray(v)[:n] for v in values]

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(C, H, W) input → its (K,) logits and (C', h, w) feature map, in one backbone pass."""
        name = self.backbone.get_inputs()[0].name
        logits, fmap = self._run(
            self.backbone, name, x[None].astype(np.float32), [self.logits_name, self.point.tensor]
        )
        return logits[0].astype(np.float32).reshape(-1), fmap[0]

    def cell_logits(self, fmap: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(C, h, w) map → (h, w, K) head logits, copy (i, j) keeping only cell (i, j)."""
        c, h, w = fmap.shape
        flat = fmap.reshape(c, h * w)
        name = self.head.get_inputs()[0].name
        size = self.fixed_batch or batch_size
        step = math.ceil(h * w / math.ceil(h * w / size))  # equal batches
        outs = []
        for start in range(0, h * w, step):
            cells = np.arange(start, min(start + step, h * w))
            batch = np.zeros((len(cells), c, h * w), fmap.dtype)
            batch[np.arange(len(cells)), :, cells] = flat[:, cells].T
            (logits,) = self._run(self.head, name, batch.reshape(len(cells), c, h, w), [self.logits_name])
            outs.append(logits.astype(np.float32).reshape(len(cells), -1))
        return np.concatenate(outs).reshape(h, w, -1)

    def cam(self, x: np.ndarray, batch_size: int = 64) -> CamResult:
        """The ReciproCAM of one (C, H, W) input: one backbone pass, h·w head rows."""
        logits, fmap = self.features(x)
        cells = self.cell_logits(fmap, batch_size)
        return CamResult(logits, cells, (int(x.shape[1]), int(x.shape[2])), self.card.temperature)


def open_cam(model: OnnxModel, layer: str | None = None) -> CamModel:
    """Split `model`'s file at `layer` (module path, tensor or node name) or at its last feature
    map, and open both parts on the model's own providers. SplitError when there is no such map."""
    proto = load_onnx(model.path)
    parts = split_model(proto, model.card.input_size, layer, str(model.path))
    providers, options = _providers(model)

    def session(part: bytes, what: str) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                part, session_options(), providers=providers, provider_options=options
            )
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CamError(
                f"{model.path}: the {what} of the split at {parts.point.tensor} does not load ({first})"
            ) from e

    backbone = session(parts.backbone.SerializeToString(), "backbone")
    head = session(parts.head.SerializeToString(), "head")
    cam = CamModel(model, parts.point, backbone, head, parts.logits, model.fixed_batch)
    # A head that cannot take a batch of cells (e.g. a Reshape to a fixed batch size) fails here,
    # before any image is decoded, rather than halfway through a run.
    p = parts.point
    cam.cell_logits(np.zeros((p.channels, p.height, p.width), p.numpy_dtype), batch_size=2)
    return cam


@dataclass(frozen=True)
class CamClass:
    """One class's map: p(class) of the image, the cells' highest and lowest p(class), the peak."""

    k: int
    cls: str
    p_original: float
    p_cell_max: float
    p_cell_min: float
    row: int  # peak of the up-sampled map, in input pixels
    col: int
    npy: Path
    faithfulness: Faithfulness | None = None


@dataclass(frozen=True)
class CamImage:
    """The CAMs of one image: its figure, the split point and one CamClass per target."""

    name: str
    path: Path
    caption: str
    png: Path
    layer: str  # the split point's name
    cells: str  # "h×w"
    classes: tuple[CamClass, ...]

    def csv_rows(self) -> list[list[object]]:
        """Its cam.csv rows, one per target class (with the faithfulness columns when scored)."""
        return [
            [self.name, str(self.path), c.cls, f"{c.p_original:.6f}", f"{c.p_cell_max:.6f}",
             f"{c.p_cell_min:.6f}", c.row, c.col, self.layer, self.cells, self.png.name, c.npy.name]
            + (c.faithfulness.csv_cells() if c.faithfulness else [])
            for c in self.classes
        ]  # fmt: skip

    def moved_to(self, folder: Path) -> CamImage:
        """The same maps with their files' paths in `folder` (after their folder was renamed)."""
        return relocated(self, folder)


def save_cam(
    out_dir: str | os.PathLike,
    name: str,
    shown: Image.Image,
    result: CamResult,
    classes: Sequence[CamClass],
    caption: str = "",
) -> Path:
    """Write <name>.png: per class a row of the input, the h×w map of p(class) from each cell alone,
    the normalised CAM over the input and, when scored, the deletion / insertion curves."""
    from cvtool.evaluation.plots import plt, save_figure  # matplotlib only when drawing

    img = np.asarray(shown)
    gray = img.ndim == 2
    cols = 4 if any(c.faithfulness for c in classes) else 3
    fig, axes = plt.subplots(
        len(classes), cols, figsize=(3.3 * cols, 3.1 * len(classes) + 0.5), squeeze=False
    )
    h, w = result.size
    for row, c in zip(axes, classes, strict=True):
        short = c.cls if len(c.cls) <= 20 else c.cls[:19] + "…"
        row[0].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=255)
        row[0].set_title(f"input, p({short}) = {c.p_original:.3f}", fontsize=9)
        cells = result.cell_probs(c.k)
        # Cells drawn over the input's extent, so they line up with the other panels.
        im = row[1].imshow(cells, cmap="viridis", extent=(0, w, h, 0), interpolation="nearest")
        row[1].set_title(f"p({short}) from each cell alone", fontsize=9)
        plt.colorbar(im, ax=row[1], fraction=0.046, pad=0.04)
        cam = result.pixel_map(c.k)
        row[2].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=255)
        im = row[2].imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.6 * cam)
        row[2].set_title(f"CAM of {short} (min-max to [0, 1])", fontsize=9)
        plt.colorbar(im, ax=row[2], fraction=0.046, pad=0.04)
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
        if cols == 4:
            ax = row[3]
            if c.faithfulness is not None:
                s, r = c.faithfulness.saliency, c.faithfulness.random
                ax.plot(s.fractions, s.deletion, "r-", label=f"deletion {s.deletion_auc:.3f}")
                ax.plot(s.fractions, s.insertion, "g-", label=f"insertion {s.insertion_auc:.3f}")
                ax.plot(r.fractions, r.deletion, "r:", label=f"random del. {r.deletion_auc:.3f}")
                ax.plot(r.fractions, r.insertion, "g:", label=f"random ins. {r.insertion_auc:.3f}")
                ax.set_xlabel("fraction of pixels", fontsize=8)
                ax.set_ylim(-0.02, 1.02)
                ax.legend(fontsize=7)
                ax.set_title(f"p({short}): AUC", fontsize=9)
            else:
                ax.axis("off")
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / f"{name}.png")


def _peak(m: np.ndarray) -> tuple[int, int]:
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(r), int(c)


def cam_maps(
    cam: CamModel,
    requests: Sequence[MapRequest],
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    faith: FaithfulnessSettings | None = None,
    baseline: str = "mean",
    on_progress: Callable[[int], None] | None = None,
    on_map: Callable[[CamImage], None] | None = None,
) -> tuple[list[CamImage], dict[Path, str]]:
    """Map each requested image and write <name>.png, <name>__<class>.npy (the [0, 1] map at the
    input size) and cam.csv into `out_dir`. With `faith`, each map is also scored by deletion and
    insertion (pixels set to `baseline`) against a random map.

    `on_map` sees each image's maps as soon as they are written. Returns the maps, and
    {path: reason} for the images that could not be read (skipped).
    """
    baseline = check_baseline(baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = cam.card
    names = list(card.class_names)
    point = cam.point
    maps: list[CamImage] = []
    failed: dict[Path, str] = {}
    for req in requests:
        try:
            shown, x = load_input(req.path, card)
        except ImageError as e:
            failed[req.path] = e.reason
            continue
        res = cam.cam(x, batch_size)
        p0 = res.p0
        pred = int(p0.argmax()) if req.pred is None else req.pred
        targets = req.targets or (pred,)
        base = baseline_for(baseline, shown, card, default_window(card.input_size)) if faith else 0.0
        classes = []
        for k in targets:
            pmap, cells = res.pixel_map(k), res.cell_probs(k)
            npy = out / f"{req.name}__{safe_filename(names[k])}.npy"
            with atomic_write(npy, "wb") as f:
                np.save(f, pmap)
            scores = (
                faithfulness(cam.model.run, x, pmap, base, k, faith.steps, faith.seed, batch_size, baseline)
                if faith
                else None
            )
            row, col = _peak(pmap)
            classes.append(
                CamClass(
                    k, names[k], float(p0[k]), float(cells.max()), float(cells.min()), row, col, npy, scores
                )
            )
        seen = f"predicted {names[pred]} (p = {p0[pred]:.3f})"
        caption = f"{req.path.name}: " + (seen if req.true is None else f"true {names[req.true]}, {seen}")
        caption += f"; CAM at {point.name}, {point.height}×{point.width} cells"
        if faith:
            caption += "\n" + "; ".join(
                f"{c.cls}: {c.faithfulness.describe()}" for c in classes if c.faithfulness
            )
        png = save_cam(out, req.name, shown, res, classes, caption)
        maps.append(
            CamImage(
                req.name, req.path, caption, png, point.name, f"{point.height}×{point.width}", tuple(classes)
            )
        )
        if on_progress:
            on_progress(1)
        if on_map:
            on_map(maps[-1])
    header = CAM_CSV_HEADER + (FAITHFULNESS_CSV_HEADER if faith else [])
    write_csv(out / "cam.csv", header, [row for m in maps for row in m.csv_rows()])
    return maps, failed
