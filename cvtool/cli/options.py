"""Options that several commands share, declared once.

Each is a `typing.Annotated` alias: a command writes `device: DeviceOpt = "auto"` and gets the same
flag name, help and choices as every other command that takes it. Fixed choices are `Literal`
types from the module that defines them, so Typer refuses bad values, lists them in --help and
completes them in the shell.

The card-override options (--classes, --size, …) come as one group: `@card_options` adds them to
a command, which receives the resolved overrides as its `card` argument. Likewise the label
options (--labels, --id-col, --label-col, --label-pattern): `@label_options` passes a parsed
`cvtool.data.LabelSource` as `labels`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cvtool.contract import Interpolation, ResizeMode
from cvtool.data import LabelSource
from cvtool.errors import CvtoolError
from cvtool.infer.session import Device

__all__ = [
    "BatchOpt",
    "DeviceOpt",
    "LabelsOpt",
    "ModelOpt",
    "OptionError",
    "ThreadsOpt",
    "VerboseOpt",
    "WorkersOpt",
    "card_options",
    "label_options",
    "parse_card_overrides",
    "parse_label_source",
]

_CARD = "Model card (overrides the file's card)"


class OptionError(CvtoolError):
    """A command-line value that the parser cannot check (a list of numbers, a size)."""


ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="ONNX model file.")]
DeviceOpt = Annotated[
    Device,
    typer.Option(help="auto (CUDA when it really loads, else CPU), cpu, cuda or tensorrt (strict)."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")]
WorkersOpt = Annotated[int | None, typer.Option(min=1, help="Decoding threads (default: one per core).")]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="ONNX Runtime threads (default: one per core).")
]
LabelsOpt = Annotated[
    Path | None, typer.Option(help="id,label CSV that labels a flat folder (id = file stem).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the resolved card and provider.")]

# The card-override group: parameter name → annotation. Values left at None are "not given",
# so the file's card (or the defaults) apply: CLI > file > defaults.
_CARD_OPTIONS: dict[str, Any] = {
    "classes": Annotated[
        str | None,
        typer.Option(help="Class names, comma-separated or a file with one per line.", rich_help_panel=_CARD),
    ],
    "size": Annotated[str | None, typer.Option(help="Input size: N or HxW.", rich_help_panel=_CARD)],
    "channels": Annotated[
        int | None, typer.Option(min=1, max=3, help="Input channels: 1 or 3.", rich_help_panel=_CARD)
    ],
    "mean": Annotated[
        str | None,
        typer.Option(help="Per-channel mean, comma-separated (0-1 scale).", rich_help_panel=_CARD),
    ],
    "std": Annotated[
        str | None,
        typer.Option(help="Per-channel std, comma-separated (0-1 scale).", rich_help_panel=_CARD),
    ],
    "resize": Annotated[ResizeMode | None, typer.Option(help="Resize policy.", rich_help_panel=_CARD)],
    "crop_pct": Annotated[
        float | None,
        typer.Option(help="shorter_crop: crop size / resized shorter side.", rich_help_panel=_CARD),
    ],
    "interpolation": Annotated[Interpolation | None, typer.Option(rich_help_panel=_CARD)],
    "jpeg_draft": Annotated[
        bool | None,
        typer.Option(
            "--jpeg-draft/--no-jpeg-draft",
            help="Decode large JPEGs at reduced size (faster); off: exactly a full decode (torchvision).",
            rich_help_panel=_CARD,
        ),
    ],
    "no_calibration": Annotated[
        bool | None,
        typer.Option(
            "--no-calibration",
            help="Ignore the card's temperature (cvtool calibrate): plain softmax of the logits.",
            rich_help_panel=_CARD,
        ),
    ],
}


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise OptionError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def parse_card_overrides(
    classes: str | None = None,
    size: str | None = None,
    channels: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    resize: str | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    jpeg_draft: bool | None = None,
    no_calibration: bool | None = None,
) -> dict[str, Any]:
    """Card fields from the command line; only those given (CLI > the file's card > defaults)."""
    o: dict[str, Any] = {}
    if classes is not None:
        p = Path(classes)
        if p.is_file():  # one class name per line
            o["class_names"] = [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
        else:
            o["class_names"] = [c.strip() for c in classes.split(",") if c.strip()]
    if size is not None:
        try:
            hw = [int(v) for v in size.lower().replace("x", ",").split(",") if v]
        except ValueError:
            hw = []
        if len(hw) not in (1, 2) or min(hw) < 1:
            raise OptionError(f"--size takes N or HxW, got {size!r}")
        o["input_size"] = hw * 2 if len(hw) == 1 else hw
    if mean is not None:
        o["mean"] = _floats(mean, "--mean")
    if std is not None:
        o["std"] = _floats(std, "--std")
    given = {
        "channels": channels,
        "resize": resize,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "jpeg_draft": jpeg_draft,
        "calibration": False if no_calibration else None,  # False: drop the file's (resolve_card)
    }
    o.update({k: v for k, v in given.items() if v is not None})
    return o


F = TypeVar("F", bound=Callable[..., Any])


def card_options(func: F) -> F:
    """Add the card-override options to a command; it receives them, parsed, as `card: dict`."""
    return _with_group(func, "card", _CARD_OPTIONS, parse_card_overrides)


_LABELS = "Labels (default: class folders, <folder>/<class>/<image>)"
# The label group: parameter name → annotation; the command receives them as one LabelSource.
_LABEL_OPTIONS: dict[str, Any] = {
    "labels": Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV labelling the images (Kaggle's trainLabels.csv): id = file stem or name.",
            rich_help_panel=_LABELS,
        ),
    ],
    "id_col": Annotated[
        str | None,
        typer.Option(help="--labels: the id column (default: the first).", rich_help_panel=_LABELS),
    ],
    "label_col": Annotated[
        str | None,
        typer.Option(help="--labels: the label column (default: the second).", rich_help_panel=_LABELS),
    ],
    "label_pattern": Annotated[
        str | None,
        typer.Option(
            help="Regex searched in each file name; its first group is the class, e.g. '^(cat|dog)\\.'.",
            rich_help_panel=_LABELS,
        ),
    ],
}


def parse_label_source(
    labels: Path | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    label_pattern: str | None = None,
) -> LabelSource:
    """The label layout the options describe; contradictions are OptionErrors."""
    if labels is not None and label_pattern is not None:
        raise OptionError("--labels and --label-pattern are alternatives: give one")
    if labels is None and (id_col is not None or label_col is not None):
        raise OptionError("--id-col and --label-col name columns of a CSV: give --labels FILE.csv too")
    return LabelSource(csv=labels, id_col=id_col, label_col=label_col, pattern=label_pattern)


def _with_group(func: F, name: str, options: dict[str, Any], parse: Callable[..., Any]) -> F:
    """`func` with the parameter `name` replaced by the options of a group, parsed into it."""
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != name]
    group = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for n, annotation in options.items()
    ]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {n: kwargs.pop(n) for n in options}
        return func(*args, **{name: parse(**values)}, **kwargs)

    # Typer reads the signature and the annotations: show it the group instead of `name`.
    params = own + group
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # or inspect would read func's signature
    return command  # type: ignore[return-value]


def label_options(func: F) -> F:
    """Add --labels, --id-col, --label-col, --label-pattern; the command gets `labels: LabelSource`."""
    return _with_group(func, "labels", _LABEL_OPTIONS, parse_label_source)
