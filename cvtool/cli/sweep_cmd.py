"""`cvtool sweep`: a grid or TPE search over `cvtool train` settings, on Optuna (cvtool.train.sweep).

The train flags after DATA are not declared here a second time: the command takes unknown
options through (Click's `ignore_unknown_options`) and `TrainFlags` parses them, and every
swept value, with the train command's own parameters (`typer.main.get_command` → the `train`
command → `make_context`), so a sweep accepts exactly what `cvtool train` accepts, and a bad
name or value is a one-line error before any trial runs.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import CommandError, console, err_console, require_torch
from cvtool.cli.options import OptionError
from cvtool.errors import Interrupted
from cvtool.train.sweep import Metric

SWEEP_EXTRA_HINT = 'install the sweep extra: pip install "cvtool[sweep]"'
# Train parameters a sweep sets itself or that have no place in one.
_NOT_TRAIN_FLAGS = ("data", "out", "resume", "list_archs")
# Train parameters whose TrainConfig field has another name (see train_cmd.train).
_RENAMED = {"labels": "labels_csv"}
_BOOL = {"true": True, "yes": True, "on": True, "1": True} | dict.fromkeys(("false", "no", "off", "0"), False)
_P = "Sweep"


def _parse_errors() -> type[Exception]:
    # Typer ≥ 0.2x parses with its own copy of Click, whose errors derive from TyperException.
    base = getattr(typer, "TyperException", None)
    if base is None:  # older Typer: Click itself
        import click

        return click.ClickException
    return base


class TrainFlags:
    """The `cvtool train` command line of a sweep: DATA and the fixed flags, plus swept values."""

    def __init__(self, args: list[str]):
        from cvtool.cli import train_cmd

        one = typer.Typer(add_completion=False)
        one.command()(train_cmd.train)
        self.command = typer.main.get_command(one)
        self.options = {p.name: p for p in self.command.params if p.name and p.param_type_name == "option"}
        self.args = list(args)
        self.fixed = self.parse(self.args)
        data = self.fixed.get("data")
        if data is None:
            raise OptionError("give the DATA folder to train on: cvtool sweep DATA --out SWEEP --grid …")
        if not Path(data).is_dir():
            raise OptionError(f"{data}: no such folder (DATA, the images to train on)")
        self.data = Path(data)
        for name in ("resume", "list_archs"):
            if self.fixed.get(name):
                raise OptionError(
                    f"--{name.replace('_', '-')} has no place in a sweep (a trial is a new run)"
                )

    def parse(self, args: list[str]) -> dict[str, Any]:
        """Train's own parsing: parameter name → value (None: not given)."""
        try:
            ctx = self.command.make_context("cvtool train", list(args))
        except _parse_errors() as e:
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            raise OptionError(f"train flags: {message}") from None
        return dict(ctx.params)

    def option(self, written: str) -> Any:
        """The train option a sweep names: lr, batch_size, batch-size or --batch-size."""
        name = written.strip().lstrip("-").replace("-", "_")
        if name in _NOT_TRAIN_FLAGS:
            raise OptionError(f"{written}: not a setting to sweep (the sweep sets it, or it has no place)")
        if name not in self.options:
            raise OptionError(f"{written}: cvtool train has no option --{name.replace('_', '-')}")
        return self.options[name]

    def flag_args(self, name: str, value: Any) -> list[str]:
        """The train arguments that set option `name` to `value` (True/False or its text)."""
        p = self.options[name]
        if not getattr(p, "is_flag", False):
            return [p.opts[0], value if isinstance(value, str) else _text(value)]
        on = value if isinstance(value, bool) else _BOOL.get(str(value).lower())
        if on is None:
            raise OptionError(f"{name}={value}: {p.opts[0]} is a switch: give true or false")
        if not on and not p.secondary_opts:
            raise OptionError(f"{name}=false: {p.opts[0]} can only be switched on")
        return [p.opts[0]] if on else [p.secondary_opts[0]]

    def convert(self, written: str, text: str) -> tuple[str, Any]:
        """(parameter name, value) for one swept value, parsed as `cvtool train` parses it."""
        p = self.option(written)
        if self.fixed.get(p.name) not in (None, False):
            raise OptionError(f"{p.opts[0]} is swept and also given as a fixed train flag: give it once")
        try:
            value = self.parse([*self.args, *self.flag_args(p.name, text)])[p.name]
        except OptionError as e:
            raise OptionError(f"{p.name}={text}: {str(e).removeprefix('train flags: ')}") from None
        return p.name, str(value) if isinstance(value, Path) else value

    def swept_args(self, params: dict[str, Any]) -> list[str]:
        return [a for name, value in params.items() for a in self.flag_args(name, value)]

    def config(self, params: dict[str, Any], run: Path, metric: Metric) -> Any:
        """The TrainConfig of a trial: DATA, the fixed flags and `params`, into `run`."""
        from cvtool.train.config import resolve_config

        values = self.parse([*self.args, *self.swept_args(params)])
        given = {
            _RENAMED.get(k, k): str(v) if isinstance(v, Path) else v
            for k, v in values.items()
            if k not in (*_NOT_TRAIN_FLAGS, "recipe")
        }
        given.update(data=str(values["data"]), out=str(run))
        if given.get("monitor") is None:
            given["monitor"] = metric  # best.pt is the checkpoint the sweep's metric picks
        return resolve_config(given, values.get("recipe"))

    def command_line(self, params: dict[str, Any], metric: Metric, out: str = "runs/best") -> str:
        monitor = ["--monitor", metric] if self.fixed.get("monitor") is None and metric != "val_acc" else []
        return "cvtool train " + shlex.join([*self.args, *self.swept_args(params), *monitor, "--out", out])

    def without_data(self) -> list[str]:
        """The fixed flags without DATA (which may differ between machines of one study)."""
        for i, a in enumerate(self.args):
            if not a.startswith("-") and Path(a) == self.data:
                return self.args[:i] + self.args[i + 1 :]
        return list(self.args)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _check_space(flags: TrainFlags, space: Any, out: Path, metric: Metric) -> None:
    """Every grid combination, or each search value and range end, must make a valid config."""
    from cvtool.train.config import TrainError

    if space.kind == "grid":
        candidates = space.combinations()
    else:
        first = {p.name: p.choices[0] if p.choices else p.low for p in space.params}
        candidates = [
            {**first, p.name: v}
            for p in space.params
            for v in (p.choices if p.choices else (p.low, p.high))
        ]  # fmt: skip
    for params in candidates:
        try:
            flags.config(params, out / "trial-check", metric)
        except TrainError as e:
            shown = " ".join(f"{k}={_text(v)}" for k, v in params.items())
            raise OptionError(f"{shown}: {e}") from None


def sweep(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Sweep folder: trial-<n>/ run folders, best.json, study.db (SQLite)."
        ),
    ],
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=V1,V2,…: every combination once (GridSampler). Repeat per option.", rich_help_panel=_P
        ),
    ] = None,
    search: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=LOW..HIGH[:log] or NAME=V1,V2,…: sampled by TPE. Repeat per option.",
            rich_help_panel=_P,
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Trials in the study in total, all workers together (default: the whole grid).",
            rich_help_panel=_P,
        ),
    ] = None,
    metric: Annotated[
        Metric, typer.Option(help="Maximize val_acc or minimize val_loss (best epoch).", rich_help_panel=_P)
    ] = "val_acc",
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="Stop a trial whose curve is below the median (MedianPruner).", rich_help_panel=_P
        ),
    ] = False,
    prune_startup: Annotated[
        int, typer.Option(min=0, help="--prune: finished trials before any is pruned.", rich_help_panel=_P)
    ] = 3,
    prune_warmup: Annotated[
        int, typer.Option(min=0, help="--prune: epochs before a trial can be pruned.", rich_help_panel=_P)
    ] = 1,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="Start no new trial after this many seconds.", rich_help_panel=_P),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna RDB URL (postgresql://user:pass@host/db for several workers) "
            "(default: sqlite:///OUT/study.db).",
            rich_help_panel=_P,
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name in the storage (default: OUT's folder name).", rich_help_panel=_P),
    ] = None,
    sampler_seed: Annotated[
        int | None, typer.Option(help="TPE's seed (default: random).", rich_help_panel=_P)
    ] = None,
) -> None:
    """Sweep train settings: cvtool sweep DATA --out SWEEP (--grid … | --search … --trials N) TRAIN-FLAGS…

    Every `cvtool train` flag after DATA is fixed for all trials; any of them can be swept.

    Each trial is a run folder SWEEP/trial-<n>/ (cvtool export, cvtool runs).

    The same command again continues the study; workers sharing --storage and --study share it.
    """
    if importlib.util.find_spec("optuna") is None:
        raise CommandError(SWEEP_EXTRA_HINT)
    require_torch()
    from cvtool.train.sweep import SweepError, SweepSettings, parse_space, run_sweep

    flags = TrainFlags(ctx.args)
    try:
        space = parse_space(grid or [], search or [], flags.convert)
    except SweepError as e:
        raise OptionError(str(e)) from None
    if space.kind == "tpe" and trials is None and timeout is None:
        raise OptionError("--search needs --trials N or --timeout SECONDS (when to stop)")
    _check_space(flags, space, out, metric)
    settings = SweepSettings(
        out=out, space=space, metric=metric, trials=trials, timeout=timeout, prune=prune,
        prune_startup=prune_startup, prune_warmup=prune_warmup, storage=storage, study=study,
        sampler_seed=sampler_seed, train_flags=flags.without_data(),
    )  # fmt: skip
    console.print(f"study {settings.study_name!r}: {' '.join(space.spec())}, {metric}")
    try:
        result = run_sweep(
            settings,
            make_config=lambda params, run: flags.config(params, run, metric),
            command_line=lambda params: flags.command_line(params, metric),
            log=console.print,
        )
    except KeyboardInterrupt as e:
        code = e.exit_code if isinstance(e, Interrupted) else 130
        raise CommandError(
            "interrupted: the running trial is marked FAIL; run the same command to continue the study", code
        ) from None
    _report(result, metric)


def _report(result: Any, metric: Metric) -> None:
    from rich.console import Console
    from rich.table import Table

    from cvtool.evaluation.runs_output import format_value, is_numeric
    from cvtool.train.sweep import sweep_table

    table = sweep_table(result, metric)
    if table.rows:
        view = Table(title=f"study {result.study} ({result.storage})", title_justify="left")
        for c in table.columns:
            view.add_column(c, justify="right" if is_numeric(table, c) else "left")
        for r in table.rows:
            view.add_row(*(format_value(c, r[c]) if r[c] != "" else "" for c in table.columns))
        # As wide as it needs (as `cvtool runs` prints it): cut-off cells ("0.66…") are no use.
        needed = console.measure(view, options=console.options.update(max_width=100_000)).maximum
        Console(width=max(console.width, needed), highlight=False, markup=False, file=console.file).print(
            view
        )
    skipped = sum(1 for t in result.trials if t.skipped)
    console.print(
        f"{len(result.trained)} trial(s) trained by this process; stopped: {result.stopped}"
        + (f"; {skipped} duplicate or surplus trial(s) skipped" if skipped else "")
    )
    if result.best is not None:
        b = result.best
        console.print(f"best: trial {b['trial']}, {metric} {b['value']:.4f}; train it again with:")
        console.print(f"  {b['command']}")
        console.print(f"wrote {result.best_json}")
    else:
        console.print("no trial has completed yet")
    if result.errors:
        err_console.print(f"{len(result.errors)} trial(s) failed:")
        for number, reason in result.errors.items():
            err_console.print(f"  trial {number}: {reason}")
        raise typer.Exit(1)


# Train flags pass through (see TrainFlags); app.py registers the command with these settings.
sweep.context_settings = {"allow_extra_args": True, "ignore_unknown_options": True}  # type: ignore[attr-defined]

__all__ = ["SWEEP_EXTRA_HINT", "TrainFlags", "sweep"]
