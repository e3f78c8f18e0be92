"""The Typer app and what the commands share: consoles, errors, card overrides, options.

Exit codes: 0 ok, 1 some items failed (they are listed), 2 usage or unusable input.
Nothing here imports torch: `train` and `export` import it inside the command, so predict and
evaluate work where PyTorch is not installed.
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


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True)
    return typer.Exit(code)


def require_torch() -> None:
    for module in ("torch", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            raise fail(TRAIN_EXTRA_HINT)


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise fail(f"--{name} takes comma-separated numbers, got {text!r}") from None


def card_overrides(
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
            raise fail(f"--size takes N or HxW, got {size!r}") from None
        o["input_size"] = hw * 2 if len(hw) == 1 else hw
    o["channels"] = channels
    o["mean"] = _floats(mean, "mean")
    o["std"] = _floats(std, "std")
    o["resize"] = resize
    o["interpolation"] = interpolation
    return {k: v for k, v in o.items() if v is not None}


def open_onnx(model: Path, device: str, overrides: dict[str, Any], verbose: bool):
    from cvtool.infer.session import DeviceError, ModelError, open_model

    try:
        m = open_model(model, device=device, overrides=overrides)
    except DeviceError as e:
        raise fail(str(e)) from None
    except ModelError as e:
        raise fail(str(e)) from None
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


def progress_bar() -> Progress:
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
