"""`cvtool occlusion`, `cvtool filters`, `cvtool activations`: what the model looks at, without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cvtool.cli.common import console, err_console, fail, open_onnx, progress_bar
from cvtool.cli.evaluate_cmd import BaselineOpt, StrideOpt, WindowOpt
from cvtool.cli.options import BatchOpt, DeviceOpt, ModelOpt, VerboseOpt, card_options


def _expand(images: list[Path]) -> list[Path]:
    """Files as given; a folder stands for the image files directly inside it."""
    from cvtool.data import DataError, list_images

    out: list[Path] = []
    for p in images:
        if p.is_dir():
            try:
                out.extend(list_images(p).files)
            except DataError as e:
                raise fail(str(e)) from None
        else:
            out.append(p)
    if not out:
        raise fail("no image files given")
    return out


def _true_labels(paths: list[Path], names: list[str], labels: Path | None) -> list[int]:
    """True class of each image: from --labels (id = file stem), else from its parent folder's name."""
    from cvtool.data import DataError, read_labels_csv

    index = {n: i for i, n in enumerate(names)}
    table = {}
    if labels is not None:
        try:
            table = read_labels_csv(labels)
        except DataError as e:
            raise fail(str(e)) from None
    out, missing = [], []
    for p in paths:
        name = table.get(p.stem) if labels is not None else p.parent.name
        if name not in index:
            missing.append(str(p))
        else:
            out.append(index[name])
    if missing:
        where = f"in {labels}" if labels is not None else "as the parent folder name"
        raise fail(
            f"--target true: no known class {where} for {len(missing)} image(s), e.g. {missing[0]}; "
            "pass --labels id,label.csv or use --target pred or a class name"
        )
    return out


@card_options
def occlusion(
    images: list[Path] = typer.Argument(..., help="Image files (a folder: the images in it)."),
    model: ModelOpt = ...,  # type: ignore[assignment]
    window: int | None = WindowOpt,
    stride: int | None = StrideOpt,
    baseline: str = BaselineOpt,
    target: str = typer.Option(
        "pred",
        help="Class whose probability is mapped: pred, true (from --labels or the parent "
        "folder's name) or a class name.",
    ),
    labels: Path | None = typer.Option(None, help="id,label CSV giving the true classes (--target true)."),
    out: Path = typer.Option(Path("occlusion"), "--out", "-o", help="Folder for the maps."),
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    card: dict[str, Any] | None = None,
    verbose: VerboseOpt = False,
) -> None:
    """Occlusion maps: p(target) while a window hides each part of the image, batched on ONNX Runtime.

    Writes, per image, <n>_<stem>.png (input, map, log map, overlay) and <n>_<stem>__<class>.npy
    (the raw map at the model's input size), plus occlusion.csv.
    """
    from cvtool.evaluate.occlusion import (
        BASELINES,
        OCCLUSION_CSV_HEADER,
        default_stride,
        default_window,
        num_positions,
        occlude_file,
        save_occlusion,
        summary_row,
    )
    from cvtool.evaluate.outputs import safe_filename, write_csv
    from cvtool.images import ImageError

    if baseline not in BASELINES:
        raise fail(f"--baseline must be one of {', '.join(BASELINES)}")
    ov = card or {}
    m = open_onnx(model, device, ov, verbose)
    names = list(m.card.class_names)
    window = window or default_window(m.card.input_size)
    stride = stride or default_stride(window)
    if window > min(m.card.input_size):
        raise fail(f"--window {window} is larger than the model input {m.card.input_size}")
    if stride > window:
        raise fail(f"--stride {stride} must not exceed --window {window} (pixels would go uncovered)")
    if target not in ("pred", "true") and target not in names:
        raise fail(f"--target {target!r} is not pred, true or a class of the model ({', '.join(names[:10])})")
    paths = _expand(images)
    truth = _true_labels(paths, names, labels) if target == "true" else None

    rows, failed = [], {}
    width = len(str(len(paths)))
    with progress_bar() as progress:
        task = progress.add_task(
            "occlusion", total=len(paths) * num_positions(m.card.input_size, window, stride)
        )
        for i, path in enumerate(paths):
            try:
                shown, res = occlude_file(
                    m.run, path, m.card, window, stride, baseline, batch_size,
                    lambda n: progress.advance(task, n),
                )  # fmt: skip
            except ImageError as e:
                failed[path] = e.reason
                continue
            pred = int(res.p0.argmax())
            k = pred if target == "pred" else truth[i] if truth is not None else names.index(target)
            name = f"{i + 1:0{width}d}_{safe_filename(path.stem)}"
            caption = f"{path.name}: predicted {names[pred]} (p = {res.p0[pred]:.3f})"
            files = save_occlusion(out, name, shown, res, [k], names, caption)
            rows.append(summary_row(name, path, res, k, names[k], files))
            console.print(
                f"{path}: p({names[k]}) = {res.p0[k]:.3f}, lowest {float(rows[-1][4]):.3f} when occluding "
                f"row {rows[-1][5]}, column {rows[-1][6]} → {files['png']}"
            )
    write_csv(out / "occlusion.csv", OCCLUSION_CSV_HEADER, rows)
    console.print(
        f"{len(rows)} map(s), {window}-pixel window, stride {stride}, baseline {baseline}, in {out}/"
    )
    if failed:
        for p, reason in failed.items():
            err_console.print(f"{p}: {reason}")
        err_console.print(f"{len(failed)} image(s) could not be read")
        raise typer.Exit(1)


def filters(
    model: Path = typer.Argument(..., help="ONNX model file."),
    compare: Path | None = typer.Option(None, help="A second model (e.g. before training), side by side."),
    out: Path = typer.Option(Path("filters.png"), "--out", "-o", help="PNG to write."),
) -> None:
    """Grid of the first convolution's filters, read from the model file's weights."""
    from cvtool.evaluate.filters import FilterError, plot_filters

    models = [model] + ([compare] if compare else [])
    try:
        path, found = plot_filters(models, out)
    except FilterError as e:
        raise fail(str(e)) from None
    for m, (name, w) in zip(models, found, strict=True):
        console.print(f"{m}: {name} {tuple(w.shape)} (out, in, height, width), max |w| {abs(w).max():.4g}")
    console.print(f"wrote {path}")


@card_options
def activations(
    model: Path = typer.Argument(..., help="ONNX model file."),
    image: Path | None = typer.Argument(None, help="Image whose feature maps to show."),
    layer: list[str] | None = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to show: module path (features.2), tensor or node name; repeatable.",
    ),
    show_layers: bool = typer.Option(False, "--list-layers", help="List the layers with their shapes."),
    out: Path = typer.Option(Path("activations"), "--out", "-o", help="Folder for the grids."),
    max_channels: int = typer.Option(64, min=1, help="Channels shown per layer."),
    device: DeviceOpt = "auto",
    card: dict[str, Any] | None = None,
    verbose: VerboseOpt = False,
) -> None:
    """Feature maps of chosen layers for one image (the graph gets extra outputs, in memory)."""
    import numpy as np

    from cvtool.atomic import atomic_write
    from cvtool.evaluate.activations import (
        ActivationError,
        compute_activations,
        list_layers,
        plot_activations,
    )
    from cvtool.evaluate.outputs import safe_filename
    from cvtool.images import ImageError, load_and_preprocess

    if show_layers:
        try:
            layers = list_layers(model)
        except ActivationError as e:
            raise fail(str(e)) from None
        table = Table(title=f"{model}: feature-map layers (use a name from either column)")
        for col in ("module", "tensor", "op", "shape"):
            table.add_column(col)
        maps = [x for x in layers if x.shape is None or len(x.shape) == 4]
        for x in maps:
            shape = (
                "?"
                if x.shape is None
                else "×".join("N" if not isinstance(d, int) else str(d) for d in x.shape)
            )
            table.add_row(", ".join(x.modules), x.tensor, x.op, shape)
        console.print(table)
        if len(layers) > len(maps):
            console.print(f"({len(layers) - len(maps)} other tensors are not (N, C, H, W) feature maps)")
        return
    if image is None or not layer:
        raise fail("give an IMAGE and at least one --layer NAME, or --list-layers")
    ov = card or {}
    m = open_onnx(model, device, ov, verbose)
    try:
        x = load_and_preprocess(image, m.card)
    except ImageError as e:
        raise fail(str(e)) from None
    try:
        acts = compute_activations(model, x, layer, providers=m.session.get_providers())
    except ActivationError as e:
        raise fail(str(e)) from None
    for name, a in acts.items():
        stem = safe_filename(name)
        png = plot_activations(a, name, out / f"{stem}.png", max_channels, caption=image.name)
        with atomic_write(out / f"{stem}.npy", "wb") as f:
            np.save(f, a)
        console.print(f"{name}: {a.shape[0]} channels of {a.shape[1]}×{a.shape[2]} → {png}")
