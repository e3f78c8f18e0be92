"""The `cvtool` command: every command in one list, and the one handler for expected errors.

Commands are plain functions in the *_cmd modules; COMMANDS below registers them, with one or two
real example lines each for --help. A command raises `CvtoolError` (or lets one through) for what
the user can fix: `main` prints its message as one line and exits with its code (2 by default),
and OSError (disk full, permission denied, read-only folder) likewise names the path. A traceback
is shown only with --debug or CVTOOL_DEBUG=1.

SIGTERM (what SLURM, Kubernetes and `timeout` send) is treated like Ctrl-C: it raises
`Interrupted` in the main thread, so the same cleanup runs (atomic writes leave the previous file,
checkpoints stay whole) and the exit code is 128 + the signal.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer

from cvtool import __version__
from cvtool.cli import (
    audit_cmd,
    bundle_cmd,
    calibrate_cmd,
    card_cmd,
    data_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    inspect_cmd,
    merge_cmd,
    predict_cmd,
    quantize_cmd,
    runs_cmd,
    summary_cmd,
    sweep_cmd,
    train_cmd,
)
from cvtool.cli.common import console, err_console
from cvtool.errors import CvtoolError, Interrupted

__all__ = ["app", "main"]

app = typer.Typer(
    help="Train image classifiers, export them to self-describing ONNX, predict and evaluate "
    "without PyTorch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
card_app = typer.Typer(help="Show or set the model card stored in an ONNX file.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
app.add_typer(card_app, name="card")
app.add_typer(data_app, name="data")

# (group, name, function, example lines for --help), in the order --help lists them.
COMMANDS: list[tuple[typer.Typer, str, Callable[..., Any], list[str]]] = [
    (data_app, "fashion-mnist", data_cmd.fashion_mnist, ["cvtool data fashion-mnist data/fashion-mnist"]),
    (data_app, "split", data_cmd.split, [
        "cvtool data split cifar10/train data/cifar10-split --labels cifar10/trainLabels.csv --test 0",
        "cvtool data split dogs-vs-cats/train data/dvc --label-pattern '^(cat|dog)\\.' --per-class 2000",
    ]),
    (app, "train", train_cmd.train, [
        "cvtool train data/fashion-mnist/train --recipe fashion-mnist --out runs/fm",
        "cvtool train --resume runs/fm",
    ]),
    (app, "sweep", sweep_cmd.sweep, [
        "cvtool sweep data/train --out sweeps/lr --grid lr=0.1,0.01,0.001 --grid arch=cnn4,resnet18 "
        "--epochs 5",
        "cvtool sweep data/train --out sweeps/tpe --search lr=1e-4..1e-1:log --search dropout=0..0.5 "
        "--trials 20 --prune --epochs 10",
    ]),
    (app, "export", export_cmd.export, [
        "cvtool export runs/fm/best.pt -o model.onnx --verify data/fashion-mnist/test "
        "--labels data/fashion-mnist/test_labels.csv",
    ]),
    (app, "predict", predict_cmd.predict, [
        "cvtool predict data/fashion-mnist/test -m model.onnx -o submission.csv",
        "cvtool predict test/ -m a.onnx -m b.onnx --tta flip --shard auto --shards 4 -o part.csv",
    ]),
    (app, "merge", merge_cmd.merge, ["cvtool merge parts/part*.csv -o submission.csv"]),
    (app, "bundle", bundle_cmd.bundle, [
        "cvtool bundle model.onnx -o kaggle-bundle --cpu",
        "cvtool bundle a.onnx b.onnx -o kaggle-bundle --python 3.11 --platform manylinux_2_28_x86_64",
    ]),
    (app, "evaluate", evaluate_cmd.evaluate, [
        "cvtool evaluate data/fashion-mnist/test --labels data/fashion-mnist/test_labels.csv "
        "-m model.onnx -o eval --failures 50 --occlusion 5",
    ]),
    (app, "audit", audit_cmd.audit, [
        "cvtool audit data/fashion-mnist/train data/fashion-mnist/test "
        "--labels data/fashion-mnist/test_labels.csv -o audit",
        "cvtool audit train/ test/ --model model.onnx --similarity 0.98 -o audit",
    ]),
    (app, "cam", explain_cmd.cam, [
        "cvtool cam img1.png img2.png -m model.onnx --target pred -o cam/",
        "cvtool cam test/ -m model.onnx --layer layer4 --faithfulness -o cam/",
    ]),
    (app, "occlusion", explain_cmd.occlusion, ["cvtool occlusion img1.png img2.png -m model.onnx -o occ/"]),
    (app, "filters", explain_cmd.filters, [
        "cvtool filters model.onnx --compare untrained.onnx -o filters.png",
    ]),
    (app, "activations", explain_cmd.activations, [
        "cvtool activations model.onnx --list-layers",
        "cvtool activations model.onnx img.png --layer features.2 -o acts/",
    ]),
    (app, "calibrate", calibrate_cmd.calibrate, [
        "cvtool calibrate model.onnx data/val -o model.calibrated.onnx",
        "cvtool calibrate model.onnx --oof runs/cv/oof.csv -o model.calibrated.onnx",
    ]),
    (app, "quantize", quantize_cmd.quantize, [
        "cvtool quantize model.onnx --calib data/fashion-mnist/train -o model.int8.onnx",
    ]),
    (app, "inspect", inspect_cmd.inspect, ["cvtool inspect model.onnx", "cvtool inspect model.onnx --json"]),
    (app, "summary", summary_cmd.summary, ["cvtool summary runs/fm/best.pt", "cvtool summary model.onnx"]),
    (app, "runs", runs_cmd.runs, [
        "cvtool runs runs/*",
        "cvtool runs runs/ -o runs.md --plot curves.png --sort val_acc",
    ]),
    (card_app, "set", card_cmd.card_set, [
        "cvtool card set resnet18.onnx --classes cat,dog --size 224 "
        "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225",
    ]),
    (card_app, "show", card_cmd.card_show, ["cvtool card show model.onnx"]),
]

_debug = os.environ.get("CVTOOL_DEBUG", "") not in ("", "0")
_signalled: int | None = None  # the last SIGINT/SIGTERM received


def _handled(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; expected errors become one line and an exit code (a traceback with --debug)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CvtoolError as e:
            if _debug:
                raise
            err_console.print(f"error: {e}")
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            if _debug:
                raise
            where = f"{e.filename}: " if e.filename else ""
            err_console.print(f"error: {where}{e.strerror or e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            if _debug:
                raise
            code = e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT
            err_console.print(f"interrupted ({signal.Signals(code - 128).name}); outputs left as they were")
            raise typer.Exit(code) from None

    return command


def _examples(lines: list[str]) -> str:
    # Rich help joins single newlines into one paragraph; a blank line keeps each example whole.
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


for group, name, function, examples in COMMANDS:
    # A command that passes unknown options on (sweep → train's parser) sets `context_settings`.
    settings = getattr(function, "context_settings", None)
    group.command(name, epilog=_examples(examples), context_settings=settings)(_handled(function))


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also CVTOOL_DEBUG=1)."),
) -> None:
    global _debug
    _debug = _debug or debug
    if version:
        console.print(f"cvtool {__version__}")
        raise typer.Exit(0)


def _interrupt(signum: int, _frame: Any) -> None:
    global _signalled
    _signalled = signum
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `cvtool` command and of `python -m cvtool`."""
    # SIGINT's default is restored too: a parent that ignored it (nohup, a background job of a
    # script) would otherwise leave the child unable to be interrupted.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        app(args=argv, prog_name="cvtool")
    except SystemExit as e:
        # A signal outside a command (while parsing, importing) reaches Click, which exits 1.
        if _signalled is not None and e.code == 1:
            sys.exit(128 + _signalled)
        raise
