"""`cvtool cam`, `cvtool occlusion`, `cvtool filters`, `cvtool activations`: what the model looks at,
without torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cvtool.cli.common import console, err_console, open_onnx, progress_bar
from cvtool.cli.explain_options import (
    BaselineOpt,
    CamLayerOpt,
    DeletionBaselineOpt,
    FaithfulnessOpt,
    FaithfulnessStepsOpt,
    StrideOpt,
    TargetOpt,
    WindowOpt,
)
from cvtool.cli.options import (
    BatchOpt,
    DeviceOpt,
    ModelOpt,
    OptionError,
    VerboseOpt,
    card_options,
    label_options,
)
from cvtool.data import LabelSource

if TYPE_CHECKING:
    from cvtool.evaluation.faithfulness import Faithfulness, FaithfulnessSettings


def faithfulness_table(title: str, methods: Sequence[tuple[str, Sequence[Faithfulness]]]) -> Table:
    """Mean deletion / insertion AUC per method, each followed by its random reference."""
    from cvtool.evaluation.faithfulness import mean_scores

    table = Table(title=title)
    for col in ("map", "maps", "deletion AUC ↓", "insertion AUC ↑"):
        table.add_column(col, justify="left" if col == "map" else "right")
    for name, scores in methods:
        mean = mean_scores(scores)
        if not mean:
            continue
        table.add_row(name, str(len(scores)), f"{mean['deletion_auc']:.3f}", f"{mean['insertion_auc']:.3f}")
        table.add_row(
            "  random (seeded)",
            str(len(scores)),
            f"{mean['random_deletion_auc']:.3f}",
            f"{mean['random_insertion_auc']:.3f}",
        )
    return table


@card_options
@label_options
def cam(
    images: Annotated[list[Path], typer.Argument(help="Image files (a folder: the images in it).")],
    model: ModelOpt,
    card: dict[str, Any],
    target: TargetOpt = "pred",
    labels: LabelSource = LabelSource(),
    layer: CamLayerOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps.")] = Path("cam"),
    faithfulness: FaithfulnessOpt = False,
    faithfulness_steps: FaithfulnessStepsOpt = 20,
    baseline: DeletionBaselineOpt = "mean",
    seed: Annotated[int, typer.Option(help="Seed of the random reference map (--faithfulness).")] = 0,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Class activation maps (ReciproCAM) from the ONNX file: one backbone pass per image, then the
    head on each cell of the last feature map alone; gradient-free, no PyTorch.

    Writes, per image, <n>_<stem>.png (input, p(target) per cell, CAM overlay) and
    <n>_<stem>__<class>.npy (the CAM at the model's input size, min-max normalised to [0, 1]),
    plus cam.csv.
    """
    from cvtool.evaluation.cam import CamImage, cam_maps, open_cam
    from cvtool.evaluation.explain import map_requests
    from cvtool.evaluation.faithfulness import FaithfulnessSettings

    m = open_onnx(model, device, card, verbose)
    requests = map_requests(images, m.card.class_names, target, labels)
    split = open_cam(m, layer)
    console.print(f"split at {split.describe()}")

    def show(im: CamImage) -> None:
        for c in im.classes:
            scores = f"; {c.faithfulness.describe()}" if c.faithfulness else ""
            console.print(
                f"{im.path}: p({c.cls}) = {c.p_original:.3f}, cells alone {c.p_cell_min:.3f}–"
                f"{c.p_cell_max:.3f}, peak at row {c.row}, column {c.col}{scores} → {im.png}"
            )

    faith = FaithfulnessSettings(faithfulness_steps, seed) if faithfulness else None
    with progress_bar() as progress:
        task = progress.add_task("cam", total=len(requests))
        maps, failed = cam_maps(
            split, requests, out, batch_size, faith, baseline,
            on_progress=lambda n: progress.advance(task, n), on_map=show,
        )  # fmt: skip
    p = split.point
    console.print(f"{len(maps)} map(s) from {p.name}, {p.height}×{p.width} cells, in {out}/")
    _finish("cam", maps, faith, baseline, failed)


def _finish(
    kind: str, maps: list[Any], faith: FaithfulnessSettings | None, baseline: str, failed: dict[Path, str]
) -> None:
    """What cam and occlusion print at the end: the faithfulness means, then the unreadable images."""
    if faith and maps:
        scores = [c.faithfulness for m in maps for c in m.classes if c.faithfulness]
        title = f"faithfulness, {faith.steps} steps, baseline {baseline}"
        console.print(faithfulness_table(title, [(kind, scores)]))
    if failed:
        for path, reason in failed.items():
            err_console.print(f"{path}: {reason}")
        err_console.print(f"{len(failed)} image(s) could not be read")
        raise typer.Exit(1)


@card_options
@label_options
def occlusion(
    images: Annotated[list[Path], typer.Argument(help="Image files (a folder: the images in it).")],
    model: ModelOpt,
    card: dict[str, Any],
    window: WindowOpt = None,
    stride: StrideOpt = None,
    baseline: BaselineOpt = "mean",
    target: Annotated[
        str,
        typer.Option(
            help="Class whose probability is mapped: pred, true (from --labels, --label-pattern or "
            "the parent folder's name) or a class name."
        ),
    ] = "pred",
    labels: LabelSource = LabelSource(),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps.")] = Path("occlusion"),
    faithfulness: FaithfulnessOpt = False,
    faithfulness_steps: FaithfulnessStepsOpt = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random reference map (--faithfulness).")] = 0,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Occlusion maps: p(target) while a window hides each part of the image, batched on ONNX Runtime.

    Writes, per image, <n>_<stem>.png (input, map, log map, overlay) and <n>_<stem>__<class>.npy
    (the raw map at the model's input size), plus occlusion.csv (with --faithfulness, the deletion
    and insertion AUC of the drop in p(target), pixels set to the same baseline).
    """
    from cvtool.evaluation.explain import map_requests
    from cvtool.evaluation.faithfulness import FaithfulnessSettings
    from cvtool.evaluation.occlusion import OcclusionMap, num_positions, occlusion_maps, resolve_window

    m = open_onnx(model, device, card, verbose)
    window, stride = resolve_window(m.card.input_size, window, stride)
    requests = map_requests(images, m.card.class_names, target, labels)

    def show(occ: OcclusionMap) -> None:
        c = occ.classes[0]
        console.print(
            f"{occ.path}: p({c.cls}) = {c.p_original:.3f}, lowest {c.p_min:.3f} when occluding "
            f"row {c.row}, column {c.col}"
            + (f"; {c.faithfulness.describe()}" if c.faithfulness else "")
            + f" → {occ.png}"
        )

    faith = FaithfulnessSettings(faithfulness_steps, seed) if faithfulness else None
    with progress_bar() as progress:
        total = len(requests) * num_positions(m.card.input_size, window, stride)
        task = progress.add_task("occlusion", total=total)
        maps, failed = occlusion_maps(
            m.run, m.card, requests, out, window, stride, baseline, batch_size,
            on_progress=lambda n: progress.advance(task, n), on_map=show, faith=faith,
        )  # fmt: skip
    console.print(
        f"{len(maps)} map(s), {window}-pixel window, stride {stride}, baseline {baseline}, in {out}/"
    )
    _finish("occlusion (drop in p)", maps, faith, baseline, failed)


def filters(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    compare: Annotated[
        Path | None, typer.Option(help="A second model (e.g. before training), side by side.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("filters.png"),
) -> None:
    """Grid of the first convolution's filters, read from the model file's weights."""
    from cvtool.evaluation.filters import plot_filters

    models = [model] + ([compare] if compare else [])
    path, found = plot_filters(models, out)
    for m, (name, w) in zip(models, found, strict=True):
        console.print(f"{m}: {name} {tuple(w.shape)} (out, in, height, width), max |w| {abs(w).max():.4g}")
    console.print(f"wrote {path}")


def _show_layers(model: Path) -> None:
    from cvtool.onnxtools.layers import list_layers

    layers = list_layers(model)
    table = Table(title=f"{model}: feature-map layers (use a name from either column)")
    for col in ("module", "tensor", "op", "shape"):
        table.add_column(col)
    maps = [x for x in layers if x.shape is None or len(x.shape) == 4]
    for x in maps:
        shape = "?" if x.shape is None else "×".join(str(d) if isinstance(d, int) else "N" for d in x.shape)
        table.add_row(", ".join(x.modules), x.tensor, x.op, shape)
    console.print(table)
    if len(layers) > len(maps):
        console.print(f"({len(layers) - len(maps)} other tensors are not (N, C, H, W) feature maps)")


@card_options
def activations(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    card: dict[str, Any],
    image: Annotated[Path | None, typer.Argument(help="Image whose feature maps to show.")] = None,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer", "-l", help="Layer to show: module path (features.2), tensor or node name; repeatable."
        ),
    ] = None,
    show_layers: Annotated[
        bool, typer.Option("--list-layers", help="List the layers with their shapes.")
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the grids.")] = Path("activations"),
    max_channels: Annotated[int, typer.Option(min=1, help="Channels shown per layer.")] = 64,
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Feature maps of chosen layers for one image (the graph gets extra outputs, in memory)."""
    from cvtool.evaluation.activations import compute_activations, save_activations
    from cvtool.images import load_and_preprocess

    if show_layers:
        _show_layers(model)
        return
    if image is None or not layer:
        raise OptionError("give an IMAGE and at least one --layer NAME, or --list-layers")
    m = open_onnx(model, device, card, verbose)
    x = load_and_preprocess(image, m.card)
    acts = compute_activations(model, x, layer, providers=m.session.get_providers())
    pngs = save_activations(acts, out, max_channels, caption=image.name)
    for name, a in acts.items():
        console.print(f"{name}: {a.shape[0]} channels of {a.shape[1]}×{a.shape[2]} → {pngs[name]}")
