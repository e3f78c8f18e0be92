"""The `cvtool` command line: thin Typer wrappers over plain functions.

Exit codes: 0 ok, 1 some items failed (they are listed), 2 usage or unusable input.
torch is never imported here at module level: `train` and `export` import it inside the command,
so predict/evaluate work where PyTorch is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cvtool import __version__

app = typer.Typer(
    help="Train image classifiers, export them to self-describing ONNX, predict and evaluate "
    "without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# Markup off by default: paths and class names may contain [brackets]. Soft wrap: lines stay
# whole in logs and pipes.
console = Console(highlight=False, markup=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

TRAIN_EXTRA_HINT = 'install the training extra: pip install "cvtool[train]"'


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True)
    return typer.Exit(code)


def _require_torch() -> None:
    for module in ("torch", "onnx"):
        if importlib.util.find_spec(module) is None:
            raise _fail(TRAIN_EXTRA_HINT)


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise _fail(f"--{name} takes comma-separated numbers, got {text!r}") from None


def _overrides(
    classes: str | None,
    size: str | None,
    channels: int | None,
    mean: str | None,
    std: str | None,
    resize: str | None,
    interpolation: str | None,
) -> dict[str, Any]:
    """CLI values for the card; None means "not given" (the file's card or defaults apply)."""
    o: dict[str, Any] = {}
    if classes is not None:
        p = Path(classes)
        if p.is_file():  # one class name per line
            o["class_names"] = [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
        else:
            o["class_names"] = [c.strip() for c in classes.split(",") if c.strip()]
    if size is not None:
        parts = size.lower().replace("x", ",").split(",")
        try:
            hw = [int(v) for v in parts if v]
        except ValueError:
            raise _fail(f"--size takes N or HxW, got {size!r}") from None
        o["input_size"] = hw * 2 if len(hw) == 1 else hw
    o["channels"] = channels
    o["mean"] = _floats(mean, "mean")
    o["std"] = _floats(std, "std")
    o["resize"] = resize
    o["interpolation"] = interpolation
    return {k: v for k, v in o.items() if v is not None}


def _open(model: Path, device: str, overrides: dict[str, Any], verbose: bool):
    from cvtool.infer.session import DeviceError, ModelError, open_model

    try:
        m = open_model(model, device=device, overrides=overrides)
    except DeviceError as e:
        raise _fail(str(e)) from None
    except ModelError as e:
        raise _fail(str(e)) from None
    if not m.has_card and not overrides:
        err_console.print(
            f"warning: {model} carries no cvtool card; using defaults (see --verbose)", soft_wrap=True
        )
    if verbose:
        source = "file card" if m.has_card else "defaults"
        console.print(f"card ({source}" + (" + CLI overrides" if overrides else "") + "):")
        console.print(m.card.describe())
        console.print(f"provider: {m.provider}")
    return m


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


# Options shared by predict and evaluate (CLI > the model file's card > defaults).
ModelOpt = typer.Option(..., "--model", "-m", help="ONNX model file.")
ClassesOpt = typer.Option(None, help="Class names, comma-separated or a file with one per line.")
SizeOpt = typer.Option(None, help="Input size: N or HxW.")
ChannelsOpt = typer.Option(None, help="Input channels: 1 or 3.")
MeanOpt = typer.Option(None, help="Per-channel mean, comma-separated (0-1 scale).")
StdOpt = typer.Option(None, help="Per-channel std, comma-separated (0-1 scale).")
ResizeOpt = typer.Option(None, help="Resize policy: stretch or shorter_crop.")
InterpOpt = typer.Option(None, help="Interpolation: nearest, bilinear, bicubic, lanczos.")
DeviceOpt = typer.Option("auto", help="auto (CUDA when it really loads, else CPU), cpu or cuda.")
BatchOpt = typer.Option(64, "--batch-size", "-b", min=1, help="Images per model call.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show the resolved card and provider.")


@app.callback(invoke_without_command=True)
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        console.print(f"cvtool {__version__}")
        raise typer.Exit(0)


@data_app.command("fashion-mnist")
def data_fashion_mnist(
    out: Path = typer.Argument(..., help="Folder to create (train/, test/, CSVs)."),
    source: Path | None = typer.Option(
        None,
        help="Folder with the four IDX files [default: /usr/share/datasets/fashion-mnist "
        "when present, else download with checksum verification].",
    ),
    seed: int = typer.Option(0, help="Seed for the shuffled test ids."),
    force: bool = typer.Option(False, help="Rebuild even if OUT is already prepared."),
) -> None:
    """Lay Fashion-MNIST out as a Kaggle competition: train/<class>/, test/<id>.png, CSVs."""
    from cvtool.data import DataError
    from cvtool.fashion_mnist import prepare

    try:
        path = prepare(out, source=source, seed=seed, force=force, log=console.print)
    except (DataError, OSError) as e:
        raise _fail(str(e)) from None
    console.print(f"dataset ready: {path}/train (ImageFolder), {path}/test, {path}/test_labels.csv")


@app.command()
def train(
    data: Path = typer.Argument(..., help="ImageFolder tree: DATA/<class>/<image>."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder to write."),
    arch: str = typer.Option("simple_cnn", help="Architecture (see --list-archs)."),
    epochs: int = typer.Option(5, min=1),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    weight_decay: float = typer.Option(0.0, help="L2 penalty (Adam weight_decay)."),
    val_split: float = typer.Option(0.1, help="Stratified validation fraction."),
    seed: int = typer.Option(0),
    size: int | None = typer.Option(None, help="Square input size [default: from the data]."),
    channels: int | None = typer.Option(None, help="1 or 3 [default: from the data]."),
    hflip: bool = typer.Option(False, help="Random horizontal flips while training."),
    workers: int | None = typer.Option(None, help="DataLoader worker processes."),
    subset: int | None = typer.Option(None, help="Use at most N training images."),
    list_archs: bool = typer.Option(False, "--list-archs", help="List architectures and exit."),
) -> None:
    """Train a classifier on an ImageFolder tree; writes best.pt, last.pt, metrics.csv."""
    _require_torch()
    from cvtool.train.models import ARCHS

    if list_archs:
        for name in sorted(ARCHS):
            console.print(f"{name:12s} {ARCHS[name][1]}")
        raise typer.Exit(0)
    if arch not in ARCHS:
        raise _fail(f"unknown --arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}")
    from cvtool.data import DataError
    from cvtool.train.loop import TrainConfig
    from cvtool.train.loop import train as run_training

    cfg = TrainConfig(
        data=str(data), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, val_split=val_split, seed=seed, size=size, channels=channels,
        hflip=hflip, workers=workers, subset=subset,
    )  # fmt: skip
    try:
        result = run_training(cfg, log=console.print)
    except (DataError, ValueError, FloatingPointError) as e:
        raise _fail(str(e)) from None
    console.print(f"best val accuracy {result['best_val_acc']:.4f}; checkpoints in {out}/")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A cvtool checkpoint (best.pt / last.pt)."),
    output: Path = typer.Option(..., "--output", "-o", help="ONNX file to write."),
    opset: int = typer.Option(18, help="ONNX opset version."),
) -> None:
    """Export a checkpoint to ONNX with a dynamic batch and the model card embedded."""
    _require_torch()
    from cvtool.export.onnx_export import ExportError, export_checkpoint
    from cvtool.train.checkpoint import CheckpointError

    try:
        info = export_checkpoint(checkpoint, output, opset=opset)
    except (CheckpointError, ExportError) as e:
        raise _fail(str(e)) from None
    console.print(
        f"wrote {info['path']} (opset {info['opset']}, {info['card'].num_classes} classes, "
        f"max |Δprob| vs PyTorch {info['max_abs_prob_diff']:.1e})"
    )


@app.command()
def predict(
    test_dir: Path = typer.Argument(..., help="Folder of images (flat, Kaggle-style)."),
    model: Path = ModelOpt,
    output: Path = typer.Option(Path("submission.csv"), "--output", "-o", help="CSV to write."),
    on_error: str = typer.Option(
        "fill",
        help="Unreadable images: fill (row with the most-predicted class, listed), "
        "skip (no row, listed) or fail (write nothing).",
    ),
    recursive: bool = typer.Option(False, help="Also look in sub-folders."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    workers: int | None = typer.Option(None, help="Decoding threads."),
    classes: str | None = ClassesOpt,
    size: str | None = SizeOpt,
    channels: int | None = ChannelsOpt,
    mean: str | None = MeanOpt,
    std: str | None = StdOpt,
    resize: str | None = ResizeOpt,
    interpolation: str | None = InterpOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Predict every image in TEST_DIR and write a Kaggle submission (id,label)."""
    from cvtool.data import DataError, list_images
    from cvtool.infer.pipeline import predict_files
    from cvtool.infer.submission import (
        ON_ERROR,
        SubmissionError,
        submission_rows,
        write_failures,
        write_submission,
    )

    if on_error not in ON_ERROR:
        raise _fail(f"--on-error must be one of {', '.join(ON_ERROR)}")
    ov = _overrides(classes, size, channels, mean, std, resize, interpolation)
    m = _open(model, device, ov, verbose)
    try:
        scan = list_images(test_dir, recursive=recursive)
    except DataError as e:
        raise _fail(str(e)) from None
    if not scan.files:
        raise _fail(f"{test_dir}: no image files found")
    with _progress() as progress:
        task = progress.add_task("predict", total=len(scan.files))
        preds = predict_files(m, scan.files, batch_size, workers, lambda n: progress.advance(task, n))
    try:
        rows = submission_rows(preds, m.card.class_names, on_error)
    except SubmissionError as e:
        raise _fail(str(e), code=1) from None
    write_submission(output, rows)
    console.print(
        f"wrote {output}: {len(rows)} rows, {preds.images_per_second:.0f} images/s on {preds.provider}"
    )
    for reason, n in sorted(scan.skipped.items()):
        console.print(f"skipped {n} file(s): {reason}")
    if preds.failed:
        fail_path = output.with_name(output.stem + ".failures.csv")
        write_failures(fail_path, preds.failed)
        what = "filled with the most-predicted class" if on_error == "fill" else "left out"
        err_console.print(
            f"{len(preds.failed)} image(s) could not be read ({what}); listed in {fail_path}",
            soft_wrap=True,
        )
        for p, reason in list(preds.failed.items())[:5]:
            err_console.print(f"  {p}: {reason}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="ImageFolder tree, or a flat folder with --labels."),
    model: Path = ModelOpt,
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Folder for the results."),
    labels: Path | None = typer.Option(None, help="id,label CSV for a flat folder."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    workers: int | None = typer.Option(None, help="Decoding threads."),
    classes: str | None = ClassesOpt,
    size: str | None = SizeOpt,
    channels: int | None = ChannelsOpt,
    mean: str | None = MeanOpt,
    std: str | None = StdOpt,
    resize: str | None = ResizeOpt,
    interpolation: str | None = InterpOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Evaluate on labeled images: metrics.json, per_image.csv, confusion matrices."""
    from cvtool.data import DataError
    from cvtool.evaluate.run import evaluate as run_evaluate

    ov = _overrides(classes, size, channels, mean, std, resize, interpolation)
    m = _open(model, device, ov, verbose)
    with _progress() as progress:
        task = progress.add_task("evaluate", total=None)
        try:
            r = run_evaluate(
                m, data, out, labels, batch_size, workers,
                on_start=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )  # fmt: skip
        except DataError as e:
            raise _fail(str(e)) from None

    table = Table(title=f"{data} — {r['n']} images")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in r["per_class"].items():
        table.add_row(
            name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])
        )
    table.add_section()
    for avg in ("macro", "weighted"):
        a = r[avg]
        table.add_row(
            f"{avg} avg", f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['f1']:.3f}", str(r["n"])
        )
    console.print(table)
    console.print(
        f"accuracy {r['accuracy']:.4f} on {r['n']} images, {r['images_per_s']:.0f} images/s on "
        f"{r['provider']}; results in {out}/ (metrics.json, per_image.csv, confusion_matrix.png)"
    )
    for reason, n in sorted(r["skipped_files"].items()):
        console.print(f"skipped {n} file(s): {reason}")
    if r["failed"]:
        err_console.print(
            f"{len(r['failed'])} image(s) could not be read and are excluded from the metrics; "
            f"listed in {out}/failed_images.csv",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def main() -> None:
    app()
