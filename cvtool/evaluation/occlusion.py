"""Occlusion sensitivity (Zeiler & Fergus, 2014) through ONNX Runtime, in numpy.

A window of baseline values slides over the model's input; every occluded copy of the image goes
through the model in batches, and each pixel gets the mean probability of the target class over
the windows that cover it. Where that probability falls, the model was looking.

Window positions follow Captum's `Occlusion` (0, s, 2s, … ceil((size - window) / stride) steps; a
last window that overhangs the edge is cut by it), so with the same window, stride and baseline
`p(original) - pixel_map` equals Captum's attribution on the softmax output.

`occlusion_maps` maps a list of images and writes their figures, raw maps and occlusion.csv; both
`cvtool evaluate --occlusion` and `cvtool occlusion` use it. matplotlib is imported only when a
figure is drawn: the command line imports this module for its `Baseline` choices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
from PIL import Image, ImageFilter

from cvtool.atomic import atomic_write
from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.evaluation.faithfulness import (
    FAITHFULNESS_CSV_HEADER,
    Faithfulness,
    FaithfulnessSettings,
    faithfulness,
)
from cvtool.evaluation.outputs import relocated, safe_filename, write_csv
from cvtool.images import ImageError, load_image, preprocess, resize_and_crop

__all__ = [
    "BASELINES",
    "Baseline",
    "ClassMap",
    "MapRequest",
    "OcclusionError",
    "OcclusionMap",
    "OcclusionResult",
    "baseline_for",
    "check_baseline",
    "load_input",
    "occlude",
    "occlude_file",
    "occlusion_maps",
    "resolve_window",
    "save_occlusion",
    "window_positions",
]

# What the window shows: the training mean colour, black, or a blurred copy of the image.
Baseline = Literal["mean", "zero", "blur"]
BASELINES: tuple[str, ...] = get_args(Baseline)


class OcclusionError(CvtoolError, ValueError):
    """Occlusion settings that cannot work (a window larger than the input, a bad baseline or target)."""


def _check(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> None:
    """The one check of a window and stride against an (H, W) input."""
    (h, w), (wh, ww), (sh, sw) = size, window, stride
    shown = f"{wh}" if wh == ww else f"{wh}×{ww}"
    if not (1 <= wh <= h and 1 <= ww <= w):
        raise OcclusionError(f"window {shown} does not fit the model input {h}×{w}")
    if not (1 <= sh <= wh and 1 <= sw <= ww):
        # A stride longer than the window would leave pixels no window ever covers.
        step = f"{sh}" if sh == sw else f"{sh}×{sw}"
        raise OcclusionError(
            f"stride {step} must be between 1 and the window {shown} (pixels would go uncovered)"
        )


def resolve_window(
    input_size: tuple[int, int], window: int | None = None, stride: int | None = None
) -> tuple[int, int]:
    """(window, stride) for a model input: defaults where None, then checked (OcclusionError)."""
    window = default_window(input_size) if window is None else window
    stride = default_stride(window) if stride is None else stride
    _check(input_size, (window, window), (stride, stride))
    return window, stride


def check_baseline(kind: str) -> Baseline:
    """`kind` as a Baseline; OcclusionError naming the choices when it is not one."""
    if kind not in BASELINES:
        raise OcclusionError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
    return cast(Baseline, kind)


def window_positions(size: int, window: int, stride: int) -> np.ndarray:
    """Window offsets along one axis: 0, stride, … (ceil((size - window) / stride) + 1 of them)."""
    _check((size, size), (window, window), (stride, stride))
    return np.arange(math.ceil((size - window) / stride) + 1) * stride


@dataclass
class OcclusionResult:
    """Probabilities of every class with the window at every position."""

    p0: np.ndarray  # (K,) probabilities of the unoccluded image
    probs: np.ndarray  # (ny, nx, K) probabilities with the window's top-left at (ys[i], xs[j])
    ys: np.ndarray  # (ny,) window rows
    xs: np.ndarray  # (nx,) window columns
    window: tuple[int, int]  # (height, width) in input pixels
    size: tuple[int, int]  # (H, W) of the model input

    def pixel_map(self, k: int) -> np.ndarray:
        """(H, W) float64: mean p(class k) over the windows covering each pixel."""
        h, w = self.size
        wh, ww = self.window
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for i, y in enumerate(self.ys):
            for j, x in enumerate(self.xs):
                total[y : y + wh, x : x + ww] += self.probs[i, j, k]
                count[y : y + wh, x : x + ww] += 1
        return total / count  # every pixel is covered: the last window reaches the edge


def occlude(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    baseline: np.ndarray | float,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> OcclusionResult:
    """Occlude `x` (C, H, W) float32 with `baseline` (broadcastable to it) at every window position.

    `run` maps an (N, C, H, W) batch to (N, K) probabilities (e.g. `OnnxModel.run`). Occluded
    copies are built `batch_size` at a time, so memory stays bounded whatever the image size.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    c, h, w = x.shape
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    _check((h, w), (wh, ww), (sh, sw))
    ys, xs = window_positions(h, wh, sh), window_positions(w, ww, sw)
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape)
    p0 = run(x[None])[0]
    positions = [(y, xx) for y in ys for xx in xs]
    out = np.empty((len(positions), len(p0)), dtype=np.float32)
    # Equal batches (e.g. 57 + 56 + 56 + 56, not 64 + 64 + 64 + 33): no small, inefficient last call.
    step = math.ceil(len(positions) / math.ceil(len(positions) / batch_size))
    for start in range(0, len(positions), step):
        chunk = positions[start : start + step]
        batch = np.repeat(x[None], len(chunk), axis=0)  # (n, C, H, W)
        for b, (y, xx) in enumerate(chunk):
            batch[b, :, y : y + wh, xx : xx + ww] = base[:, y : y + wh, xx : xx + ww]
        out[start : start + len(chunk)] = run(batch)
        if on_progress:
            on_progress(len(chunk))
    return OcclusionResult(
        p0=p0,
        probs=out.reshape(len(ys), len(xs), -1),
        ys=ys,
        xs=xs,
        window=(wh, ww),
        size=(h, w),
    )


def _input_card(card: ModelCard) -> ModelCard:
    # The same normalisation for an image already at the input size: no second resize or crop.
    return dataclasses.replace(card, resize="stretch")


def baseline_for(kind: str, shown: Image.Image, card: ModelCard, window: int) -> np.ndarray | float:
    """What the window shows, in model input space.

    zero: black pixels (value 0 before normalisation); mean: the training data's mean colour
    (0 after normalisation, Captum's default); blur: the image under a Gaussian blur with
    sigma = window / 2, so only fine detail is removed.
    """
    kind = check_baseline(kind)
    if kind == "mean":
        return 0.0
    if kind == "zero":
        return preprocess(Image.new(shown.mode, shown.size, 0), _input_card(card))
    blurred = shown.filter(ImageFilter.GaussianBlur(radius=max(1.0, window / 2)))
    return preprocess(blurred, _input_card(card))


def load_input(path: str | os.PathLike, card: ModelCard) -> tuple[Image.Image, np.ndarray]:
    """Decode + preprocess one file as predict does: the image as the model sees it (resized and
    cropped, for display) and its (C, H, W) float32 input. Raises ImageError for an unreadable file."""
    shown = resize_and_crop(load_image(path, card), card)
    return shown, preprocess(shown, _input_card(card))


def occlude_file(
    run: Callable[[np.ndarray], np.ndarray],
    path: str | os.PathLike,
    card: ModelCard,
    window: int,
    stride: int,
    baseline: str = "mean",
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Image.Image, OcclusionResult]:
    """Decode + preprocess one file as predict does, then occlude it.

    Returns the image as the model sees it (resized and cropped, for display) and the result.
    Raises ImageError for an unreadable file.
    """
    shown, x = load_input(path, card)
    base = baseline_for(baseline, shown, card, window)
    return shown, occlude(run, x, base, window, stride, batch_size, on_progress)


def save_occlusion(
    out_dir: str | os.PathLike,
    name: str,
    shown: Image.Image,
    result: OcclusionResult,
    targets: Sequence[int],
    class_names: Sequence[str],
    caption: str = "",
) -> dict[str, Path]:
    """Write <name>.png (image, p(target) map, its log, overlay; one row per target) and
    <name>__<class>.npy (the raw (H, W) float32 map) for each target. Returns {kind: path}."""
    from cvtool.evaluation.plots import plt, save_figure  # matplotlib only when drawing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    img = np.asarray(shown)
    gray = img.ndim == 2
    fig, axes = plt.subplots(len(targets), 4, figsize=(13, 3.1 * len(targets) + 0.4), squeeze=False)
    for row, k in zip(axes, targets, strict=True):
        cls = class_names[k]
        pmap = result.pixel_map(k)
        npy = out / f"{name}__{safe_filename(cls)}.npy"
        with atomic_write(npy, "wb") as f:
            np.save(f, pmap.astype(np.float32))
        written[f"npy:{cls}"] = npy
        p0 = float(result.p0[k])
        short = cls if len(cls) <= 20 else cls[:19] + "…"
        row[0].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=255)
        row[0].set_title(f"input, p({short}) = {p0:.3f}", fontsize=9)
        im = row[1].imshow(pmap, cmap="viridis")
        row[1].set_title(f"p({short}) when occluded here", fontsize=9)
        plt.colorbar(im, ax=row[1], fraction=0.046, pad=0.04)
        im = row[2].imshow(np.log(np.clip(pmap, 1e-12, None)), cmap="viridis")
        row[2].set_title(f"log p({short})", fontsize=9)
        plt.colorbar(im, ax=row[2], fraction=0.046, pad=0.04)
        # Overlay what matters: how much occluding each pixel lowers p(target).
        drop = np.clip(p0 - pmap, 0, None)
        row[3].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=255)
        # Opacity grows with the drop, so pixels that do not matter show the plain image.
        scaled = drop / max(float(drop.max()), 1e-12)
        im = row[3].imshow(drop, cmap="jet", vmin=0, vmax=max(float(drop.max()), 1e-12), alpha=0.7 * scaled)
        row[3].set_title(f"drop in p({short}) (max {drop.max():.3f})", fontsize=9)
        plt.colorbar(im, ax=row[3], fraction=0.046, pad=0.04)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    wh, ww = result.window
    head = f"occlusion, {wh}×{ww} window, {len(result.ys) * len(result.xs)} positions"
    fig.suptitle(f"{caption}\n{head}" if caption else head, fontsize=10)
    fig.tight_layout()
    written["png"] = save_figure(fig, out / f"{name}.png")
    return written


def default_window(input_size: tuple[int, int]) -> int:
    """7 pixels (the classic setting for 28×28 digits), or 1/8 of the shorter side when larger;
    never more than the input itself."""
    return min(max(7, round(min(input_size) / 8)), min(input_size))


def default_stride(window: int) -> int:
    """Half the window: every pixel is covered by about four windows."""
    return max(1, window // 2)


def num_positions(input_size: tuple[int, int], window: int, stride: int) -> int:
    """How many occluded copies one image needs (for progress bars)."""
    h, w = input_size
    return len(window_positions(h, window, stride)) * len(window_positions(w, window, stride))


OCCLUSION_CSV_HEADER = [
    "name",
    "path",
    "target",
    "p_original",
    "p_min_occluded",
    "min_row",
    "min_col",
    "png",
    "npy",
]


@dataclass(frozen=True)
class MapRequest:
    """One image to map, written as <name>.png and <name>__<class>.npy."""

    name: str
    path: Path
    targets: tuple[int, ...] = ()  # classes to map; empty: the predicted class
    true: int | None = None  # the true class, named in the caption when known
    pred: int | None = None  # the prediction when already known; else the unoccluded argmax


@dataclass(frozen=True)
class ClassMap:
    """One class's map: p(class) unoccluded, its lowest value under occlusion and where."""

    k: int
    cls: str
    p_original: float
    p_min: float
    row: int
    col: int
    npy: Path
    faithfulness: Faithfulness | None = None  # deletion / insertion scores of the drop in p(class)


@dataclass(frozen=True)
class OcclusionMap:
    """The maps of one image: its figure and one ClassMap per target."""

    name: str
    path: Path
    caption: str
    png: Path
    classes: tuple[ClassMap, ...]

    def csv_rows(self) -> list[list[object]]:
        """Its occlusion.csv rows, one per target class (with the faithfulness columns when scored)."""
        return [
            [self.name, str(self.path), c.cls, f"{c.p_original:.6f}", f"{c.p_min:.6f}", c.row, c.col,
             self.png.name, c.npy.name] + (c.faithfulness.csv_cells() if c.faithfulness else [])
            for c in self.classes
        ]  # fmt: skip

    def moved_to(self, folder: Path) -> OcclusionMap:
        """The same maps with their files' paths in `folder` (after their folder was renamed)."""
        return relocated(self, folder)


def _class_map(
    result: OcclusionResult, k: int, cls: str, npy: Path, scores: Faithfulness | None = None
) -> ClassMap:
    pmap = result.pixel_map(k)
    r, c = np.unravel_index(int(np.argmin(pmap)), pmap.shape)
    return ClassMap(k, cls, float(result.p0[k]), float(pmap[r, c]), int(r), int(c), npy, scores)


def occlusion_maps(
    run: Callable[[np.ndarray], np.ndarray],
    card: ModelCard,
    requests: Sequence[MapRequest],
    out_dir: str | os.PathLike,
    window: int,
    stride: int,
    baseline: str = "mean",
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
    on_map: Callable[[OcclusionMap], None] | None = None,
    faith: FaithfulnessSettings | None = None,
) -> tuple[list[OcclusionMap], dict[Path, str]]:
    """Map each requested image and write its files and occlusion.csv into `out_dir`.

    With `faith`, each map's drop in p(class) is also scored by deletion and insertion (pixels
    set to the same baseline) against a random map. `on_map` sees each image's maps as soon as
    they are written. Returns the maps, and {path: reason} for the images that could not be read
    (skipped).
    """
    check_baseline(baseline)
    _check(card.input_size, (window, window), (stride, stride))
    out = Path(out_dir)
    names = list(card.class_names)
    maps: list[OcclusionMap] = []
    failed: dict[Path, str] = {}
    for req in requests:
        try:
            shown, x = load_input(req.path, card)
        except ImageError as e:
            failed[req.path] = e.reason
            continue
        base = baseline_for(baseline, shown, card, window)
        res = occlude(run, x, base, window, stride, batch_size, on_progress)
        pred = int(res.p0.argmax()) if req.pred is None else req.pred
        targets = req.targets or (pred,)
        seen = f"predicted {names[pred]} (p = {res.p0[pred]:.3f})"
        caption = f"{req.path.name}: " + (seen if req.true is None else f"true {names[req.true]}, {seen}")
        scores: dict[int, Faithfulness] = {}
        if faith:
            # What occluding each pixel costs p(class) is the map whose faithfulness is scored.
            for k in targets:
                drop = res.p0[k] - res.pixel_map(k)
                scores[k] = faithfulness(run, x, drop, base, k, faith.steps, faith.seed, batch_size, baseline)
            caption += "\n" + "; ".join(f"{names[k]}: {f.describe()}" for k, f in scores.items())
        files = save_occlusion(out, req.name, shown, res, targets, names, caption)
        classes = tuple(
            _class_map(res, k, names[k], files[f"npy:{names[k]}"], scores.get(k)) for k in targets
        )
        maps.append(OcclusionMap(req.name, req.path, caption, files["png"], classes))
        if on_map:
            on_map(maps[-1])
    header = OCCLUSION_CSV_HEADER + (FAITHFULNESS_CSV_HEADER if faith else [])
    write_csv(out / "occlusion.csv", header, [row for m in maps for row in m.csv_rows()])
    return maps, failed
