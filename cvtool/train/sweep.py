"""Hyper-parameter sweeps on Optuna: a grid or a TPE search over `cvtool train` settings.

Each trial is an ordinary run folder OUT/trial-<n>/ (n: Optuna's trial number), trained in this
process by `cvtool.train.loop.train`, one trial at a time. The study lives in an Optuna RDB
storage: by default the SQLite file OUT/study.db; with a PostgreSQL URL several processes or
machines share one study (the database coordinates, each worker trains).

What Optuna does: sampling (GridSampler, TPESampler), pruning (MedianPruner, fed each epoch's
validation metric), heartbeats (a trial whose process died is failed by the next worker). What
this module adds:

- Continuing: running the same sweep again trains only what is missing. A grid combination
  counts as done when a trial with its values is COMPLETE or PRUNED, failed with an error (a
  diverged loss, out of memory: retrying would fail again), or RUNNING in a live process. A
  trial that was killed or interrupted (FAIL without an error) is trained again: GridSampler
  treats it as visited, so its combination is enqueued (`Study.enqueue_trial`).
- No combination trained twice by racing workers (`decide`): a trial first records its values
  (suggest), then reads the study. It is skipped (marked PRUNED with the user attribute
  "skipped") when another trial with the same values is done, is training ("claimed"), or is a
  lower-numbered trial still deciding; it waits a moment for a higher-numbered one still
  deciding. Whichever reads second sees the other's values, and the lower number wins, so
  exactly one trains. The same rule caps the study at `trials`: a trial trains only while fewer
  than `trials` lower-numbered trials count.
- Ctrl-C / SIGTERM mark the current trial FAIL (Optuna does) and propagate.

Optuna is imported inside the functions (the `sweep` extra); torch through the training loop.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import shlex
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cvtool.atomic import atomic_write_text
from cvtool.errors import CvtoolError, Interrupted

if TYPE_CHECKING:
    import optuna

    from cvtool.evaluation.runs import RunsTable
    from cvtool.train.config import TrainConfig

__all__ = [
    "DIRECTIONS",
    "HEARTBEAT_ENV",
    "Metric",
    "Param",
    "Space",
    "SweepError",
    "SweepResult",
    "SweepSettings",
    "TrialRecord",
    "decide",
    "parse_space",
    "run_sweep",
    "sweep_table",
]

Metric = Literal["val_acc", "val_loss"]
DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {"val_acc": "maximize", "val_loss": "minimize"}
# "INTERVAL,GRACE" in seconds: how often a running trial records a heartbeat, and how long after
# the last one another worker marks it FAIL. Tests shorten them; the defaults suit real training.
HEARTBEAT_ENV = "CVTOOL_SWEEP_HEARTBEAT"
DEFAULT_HEARTBEAT = (30, 120)
WAIT_FOR_PEER_S = 30.0  # longest wait for a racing worker's trial to decide (it takes milliseconds)
MAX_SKIPS_IN_A_ROW = 20  # a sampler that keeps proposing trained values has run out of them

Convert = Callable[[str, str], "tuple[str, Any]"]  # (name as written, value text) → (option, value)


class SweepError(CvtoolError, ValueError):
    """A sweep cannot start: a bad search space, an unusable storage, a study started differently."""


@dataclass(frozen=True)
class Param:
    """One swept train option: `choices` (grid, categorical) or a `low`..`high` range."""

    name: str  # the train option's parameter name: lr, batch_size
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name}={','.join(_text(v) for v in self.choices)}"
        return f"{self.name}={_text(self.low)}..{_text(self.high)}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Space:
    """What a sweep varies: every combination of `params` (grid) or a TPE search over them."""

    kind: Literal["grid", "tpe"]
    params: tuple[Param, ...]

    def combinations(self) -> list[dict[str, Any]]:
        names = [p.name for p in self.params]
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*self.choices())]

    def choices(self) -> list[tuple[Any, ...]]:
        return [p.choices for p in self.params]

    def spec(self) -> list[str]:
        """The space as the command line gives it, e.g. ["--grid lr=0.1,0.01"]; kept in the study."""
        flag = "--grid" if self.kind == "grid" else "--search"
        return [f"{flag} {p.describe()}" for p in self.params]


def _text(value: Any) -> str:
    """A value as a command line writes it: floats round-trip exactly (repr), booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _split_assignment(item: str, flag: str) -> tuple[str, str]:
    name, sep, spec = item.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise SweepError(f"{flag} {item!r}: write NAME=VALUES, e.g. {flag} lr=0.1,0.01")
    return name.strip(), spec.strip()


def parse_space(grid: Sequence[str], search: Sequence[str], convert: Convert) -> Space:
    """The space from --grid NAME=V1,V2 items or --search NAME=LOW..HIGH[:log] / NAME=V1,V2 items.

    `convert(name, text)` parses one value the way `cvtool train` parses that option and returns
    (the option's parameter name, the value); it raises SweepError for an unknown option or a bad
    value. A range is integer or float by the option's type (`--epochs 2..8` is integer,
    `--dropout 0..0.5` float); a whole-number range of a float option is a float range.
    """
    if grid and search:
        raise SweepError("--grid and --search are alternatives: a grid tries every combination, "
                         "a search samples with TPE; give one")  # fmt: skip
    if not grid and not search:
        raise SweepError("give the values to sweep: --grid NAME=V1,V2,… or --search NAME=LOW..HIGH[:log]")
    flag, items = ("--grid", grid) if grid else ("--search", search)
    params: list[Param] = []
    for item in items:
        raw_name, spec = _split_assignment(item, flag)
        if flag == "--search" and ".." in spec:
            param = _range(raw_name, spec, convert)
        else:
            values = [v.strip() for v in spec.split(",")]
            if any(not v for v in values):
                raise SweepError(f"{flag} {item!r}: an empty value in the list")
            converted = [convert(raw_name, v) for v in values]
            name = converted[0][0]
            choices = tuple(dict.fromkeys(_storable(v) for _, v in converted))  # repeats once
            param = Param(name, choices=choices)
        if any(p.name == param.name for p in params):
            raise SweepError(f"{flag}: {param.name} is given twice")
        params.append(param)
    return Space("grid" if grid else "tpe", tuple(params))


def _range(raw_name: str, spec: str, convert: Convert) -> Param:
    body, _, scale = spec.partition(":")
    if scale not in ("", "log"):
        raise SweepError(f"--search {raw_name}={spec}: the only scale is ':log'")
    lo_text, _, hi_text = body.partition("..")
    name, low = convert(raw_name, lo_text.strip())
    _, high = convert(raw_name, hi_text.strip())
    if isinstance(low, bool) or not isinstance(low, int | float):
        raise SweepError(f"--search {raw_name}={spec}: a range needs a numeric option; list the values")
    if high <= low:
        raise SweepError(f"--search {raw_name}={spec}: the range must go from low to high")
    if scale == "log" and low <= 0:
        raise SweepError(f"--search {raw_name}={spec}: a log range must start above 0")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(name, low=low, high=high, log=scale == "log", integer=integer)


def _storable(value: Any) -> Any:
    """Optuna stores str, int, float, bool and None; paths become strings."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


@dataclass
class SweepSettings:
    """Everything `run_sweep` needs besides the training itself."""

    out: Path
    space: Space
    metric: Metric = "val_acc"
    trials: int | None = None  # trials in the study in total (grid: at most the combinations)
    timeout: float | None = None  # seconds after which no new trial starts
    prune: bool = False
    prune_startup: int = 3  # finished trials before pruning starts
    prune_warmup: int = 1  # epochs before a trial can be pruned
    storage: str | None = None  # an Optuna RDB URL; None: sqlite:///OUT/study.db
    study: str | None = None  # None: OUT's folder name
    sampler_seed: int | None = None  # TPE (GridSampler's order is fixed, the same in every worker)
    train_flags: list[str] = field(default_factory=list)  # the fixed train flags, kept in the study

    @property
    def study_name(self) -> str:
        return self.study or Path(self.out).resolve().name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.out) / 'study.db').resolve()}"


@dataclass
class TrialRecord:
    """One trial of the study, as the summary shows it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: dict[str, Any]
    run: str | None  # its run folder
    note: str = ""  # why skipped, pruned or failed
    skipped: bool = False


@dataclass
class SweepResult:
    """The study after this process's trials; `best` is None until a trial is COMPLETE."""

    study: str
    storage: str  # password hidden
    trials: list[TrialRecord]
    trained: list[int]  # trial numbers this process trained
    errors: dict[int, str]  # trials this process trained that failed with an error
    best: dict[str, Any] | None
    best_json: Path | None
    stopped: str  # why this process stopped starting trials


def decide(trials: Iterable[Any], number: int, params: dict[str, Any], limit: int | None) -> str | None:
    """Whether trial `number`, which has suggested `params`, trains: None (train), "wait" (a
    higher-numbered trial with the same values is still deciding: read again), or why it is a
    duplicate or surplus. `trials` are the study's (number, state, params, user_attrs)."""
    from optuna.trial import TrialState

    peers = [t for t in trials if t.number != number and not t.user_attrs.get("skipped")]
    wait = False
    for t in peers:
        if t.params != params:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or _failed_for_good(t):
            return f"same values as trial {t.number} ({t.state.name})"
        if t.state == TrialState.RUNNING:
            if t.user_attrs.get("claimed") or t.number < number:
                return f"same values as trial {t.number}, running"
            wait = True
    if limit is not None:
        counted = [t for t in peers if t.number < number and _counts(t)]
        if len(counted) >= limit:
            return f"the study has its {limit} trials"
    return "wait" if wait else None


def _failed_for_good(t: Any) -> bool:
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and "error" in t.user_attrs


def _counts(t: Any) -> bool:
    """Towards --trials: finished (failed with an error included) or running; not lost ones."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or _failed_for_good(t)


def _covered(t: Any) -> bool:
    """This trial's values need no other trial (it is done, or training in a live process)."""
    return not t.user_attrs.get("skipped") and bool(t.params) and _counts(t)


def _heartbeat() -> tuple[int, int]:
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return DEFAULT_HEARTBEAT
    try:
        interval, grace = (int(v) for v in text.split(","))
    except ValueError:
        raise SweepError(f"{HEARTBEAT_ENV}={text!r}: write INTERVAL,GRACE in whole seconds") from None
    if interval < 1 or grace <= interval:
        raise SweepError(f"{HEARTBEAT_ENV}={text!r}: need INTERVAL ≥ 1 and GRACE > INTERVAL")
    return interval, grace


def hidden_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: say it as given
        return url


def _with_driver(url: str) -> str:
    """A plain postgresql:// URL names the driver installed: SQLAlchemy 2.1 would assume psycopg
    (version 3), older versions psycopg2; either works."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    raise SweepError(f"{hidden_password(url)}: no PostgreSQL driver installed: pip install psycopg2-binary")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats; SweepError for a driver, URL or server problem."""
    import optuna
    import sqlalchemy.exc

    interval, grace = _heartbeat()
    shown = hidden_password(url)
    # SQLite: wait for another worker's write instead of failing with "database is locked".
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    _with_driver(url),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                )
        except ImportError as e:
            cause = e.__cause__ if isinstance(e.__cause__, ImportError) else e
            name = getattr(cause, "name", None) or "for this URL"
            hint = " (PostgreSQL: pip install psycopg2-binary)" if url.startswith("postgres") else ""
            raise SweepError(f"{shown}: the database driver {name} is not installed{hint}") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise SweepError(f"{shown}: not a database URL ({e})") from None
        except sqlalchemy.exc.SQLAlchemyError as e:
            # Two workers creating the tables at once: one of them loses the race; try again.
            if attempt == 4:
                reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise SweepError(f"{shown}: cannot open the study storage: {reason}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _grid_sampler(space: dict[str, list[Any]], seed: int) -> optuna.samplers.BaseSampler:
    """GridSampler, except that a trial without a grid id (an enqueued retry) does not break it."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            # GridSampler.after_trial looks up the trial's grid id (a KeyError for an enqueued
            # trial), only to call study.stop(), which `run_sweep` has no need of: it runs one
            # trial per optimize() call and decides itself whether another is due.
            if "grid_id" in trial.system_attrs:
                super().after_trial(study, trial, state, values)

    return Grid(space, seed=seed)


def _open_study(settings: SweepSettings, storage: Any) -> optuna.Study:
    import optuna

    space = settings.space
    if space.kind == "grid":
        # The same seed in every worker: GridSampler numbers the combinations in a seeded order.
        sampler: optuna.samplers.BaseSampler = _grid_sampler(
            {p.name: list(p.choices) for p in space.params}, seed=0
        )
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=settings.prune_startup, n_warmup_steps=settings.prune_warmup
        )
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    name = settings.study_name
    study = optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, pruner=pruner,
        direction=DIRECTIONS[settings.metric], load_if_exists=True,
    )  # fmt: skip
    if space.kind == "tpe" and settings.sampler_seed is not None:
        # A seeded sampler started again would propose its first values again: go on from there.
        n = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed + n)
    where = hidden_password(settings.storage_url)
    attrs = study.user_attrs
    if "cvtool_space" not in attrs:
        if study.get_trials(deepcopy=False):
            raise SweepError(
                f"study {name!r} in {where} was not started by cvtool sweep; give another --study"
            )
        study.set_user_attr("cvtool_space", space.spec())
        study.set_user_attr("cvtool_metric", settings.metric)
        study.set_user_attr("cvtool_train_flags", settings.train_flags)
    elif attrs["cvtool_space"] != space.spec() or attrs.get("cvtool_metric") != settings.metric:
        raise SweepError(
            f"study {name!r} in {where} sweeps {' '.join(attrs['cvtool_space'])} for "
            f"{attrs.get('cvtool_metric')}; this command gives {' '.join(space.spec())} for "
            f"{settings.metric}: give another --out or --study"
        )
    return study


def _fail_lost_trials(study: optuna.Study, log: Callable[[str], None]) -> None:
    """Mark FAIL the running trials whose process stopped sending heartbeats (killed, machine lost)."""
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number in running:
            where = t.user_attrs.get("host", "?")
            log(
                f"trial {t.number} (on {where}) sent no heartbeat: marked FAIL; "
                "its values will be trained again"
            )


def _todo(settings: SweepSettings, trials: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    """(grid combinations still to train, whether another trial may start)."""
    counted = sum(1 for t in trials if not t.user_attrs.get("skipped") and _counts(t))
    room = settings.trials is None or counted < settings.trials
    if settings.space.kind == "tpe":
        return [], room
    done = [t.params for t in trials if _covered(t)]
    todo = [c for c in settings.space.combinations() if c not in done]
    return todo, room and bool(todo)


def _enqueue_retry(study: optuna.Study, todo: list[dict[str, Any]], trials: list[Any], force: bool) -> None:
    """Enqueue a combination GridSampler will not pick again: one whose trial was lost (FAIL
    counts as visited for it) or, after a skipped duplicate (`force`), the next one to do."""
    from optuna.trial import TrialState

    waiting = [t.system_attrs.get("fixed_params") for t in trials if t.state == TrialState.WAITING]
    tried = [t.params for t in trials if t.state.is_finished()]
    for combo in todo:
        if combo in waiting:
            return  # ask() takes waiting trials first
        if force or combo in tried:
            study.enqueue_trial(combo, user_attrs={"retry": True})
            return


def run_sweep(
    settings: SweepSettings,
    make_config: Callable[[dict[str, Any], Path], TrainConfig],
    command_line: Callable[[dict[str, Any]], str],
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run trials until the study has what was asked (the grid, `trials`) or `timeout` passes.

    `make_config(params, run_folder)` is the training config of a trial (fixed flags + params);
    `command_line(params)` the `cvtool train` line that repeats it. Writes OUT/best.json.
    KeyboardInterrupt (Ctrl-C, SIGTERM as `cvtool.errors.Interrupted`) marks the running trial
    FAIL and propagates.
    """
    import optuna

    out = Path(settings.out)
    if settings.storage is None:
        out.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs each trial (and a failure with its traceback); this module reports them itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = _open_study(settings, open_storage(settings.storage_url))
        if not study.get_trials(deepcopy=False) and any(out.glob("trial-*")):
            raise SweepError(
                f"{out} holds trial folders but study {settings.study_name!r} has no trials: "
                "give another --out (or the --storage and --study of those trials)"
            )
        recorded = study.user_attrs.get("cvtool_train_flags")
        if recorded is not None and recorded != settings.train_flags:
            log(
                f"warning: study {settings.study_name!r} was started with the train flags "
                f"{shlex.join(recorded) or '(none)'}; this command gives "
                f"{shlex.join(settings.train_flags) or '(none)'}: its trials may not compare"
            )
        trained, errors, stopped = _loop(settings, study, make_config, command_line, log)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _result(settings, study, trained, errors, stopped, command_line)


def _loop(
    settings: SweepSettings,
    study: optuna.Study,
    make_config: Callable[[dict[str, Any], Path], TrainConfig],
    command_line: Callable[[dict[str, Any]], str],
    log: Callable[[str], None],
) -> tuple[list[int], dict[int, str], str]:
    import optuna

    from cvtool.train.loop import train

    out = Path(settings.out)
    trained: list[int] = []
    errors: dict[int, str] = {}
    start = time.monotonic()
    skipped_in_a_row = 0
    space, metric = settings.space, settings.metric
    better = max if DIRECTIONS[metric] == "maximize" else min

    def objective(trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in space.params}
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        reason = _claim(study, trial, params, settings.trials)
        if reason is not None:
            trial.set_user_attr("skipped", reason)
            log(f"trial {trial.number}: skipped ({reason})")
            raise optuna.TrialPruned(reason)
        run = out / f"trial-{trial.number}"
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("command", command_line(params))
        shown = " ".join(f"{k}={_text(v)}" for k, v in params.items())
        log(f"trial {trial.number}: {shown} → {run}")
        trained.append(trial.number)

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
            trial.report(float(row[metric]), epoch)
            if settings.prune and trial.should_prune():
                trial.set_user_attr("pruned_at", epoch)
                raise optuna.TrialPruned(f"{metric} {row[metric]:.4f} at epoch {epoch}, below the median")

        try:
            if run.exists() and any(run.iterdir()):
                raise SweepError(f"{run} exists already; it is not this study's trial {trial.number}")
            cfg = make_config(params, run)
            result = train(cfg, log=_indented(log), on_epoch_end=on_epoch_end)
        except optuna.TrialPruned as e:
            log(f"trial {trial.number}: pruned ({e})")
            raise
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            trial.set_user_attr("interrupted", signal.Signals(signum).name)
            raise
        except Exception as e:
            if not _trial_error(e):
                raise
            errors[trial.number] = str(e).splitlines()[0] if str(e) else type(e).__name__
            trial.set_user_attr("error", errors[trial.number])
            log(f"trial {trial.number}: failed: {errors[trial.number]}")
            raise _TrialFailed(errors[trial.number]) from None
        value = better(float(r[metric]) for r in result.epochs)
        log(f"trial {trial.number}: {metric} {value:.4f}")
        return value

    while True:
        _fail_lost_trials(study, log)
        trials = study.get_trials(deepcopy=False)
        todo, room = _todo(settings, trials)
        if not room:
            running = sum(1 for t in trials if t.state.name == "RUNNING")
            return (
                trained,
                errors,
                "the study has all its trials" + (f" ({running} still running elsewhere)" if running else ""),
            )
        if settings.timeout is not None and time.monotonic() - start >= settings.timeout:
            return trained, errors, f"--timeout {settings.timeout:g} s reached"
        if skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            return trained, errors, f"{skipped_in_a_row} proposals in a row had been trained already"
        if space.kind == "grid":
            _enqueue_retry(study, todo, trials, force=skipped_in_a_row > 0)
        study.optimize(objective, n_trials=1, catch=(_TrialFailed,), gc_after_trial=True)
        skipped_in_a_row = skipped_in_a_row + 1 if _was_skipped(study) else 0


def _indented(log: Callable[[str], None]) -> Callable[[str], None]:
    """Training's log lines under their trial's line."""
    return lambda text: log("\n".join(f"  {line}" for line in str(text).splitlines()))


class _TrialFailed(Exception):
    """A trial's training failed for a reason that would recur (recorded as its "error")."""


def _trial_error(e: BaseException) -> bool:
    """Errors that fail one trial, not the sweep: cvtool's expected errors, running out of memory."""
    if isinstance(e, CvtoolError | MemoryError):
        return True
    try:
        import torch
    except ImportError:
        return False
    return isinstance(e, torch.OutOfMemoryError)


def _was_skipped(study: optuna.Study) -> bool:
    """Whether this process's last trial was skipped as a duplicate or surplus."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == os.getpid()]
    return bool(mine) and bool(mine[-1].user_attrs.get("skipped"))


def _claim(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], limit: int | None) -> str | None:
    """None once this trial may train (then marked "claimed"), else why it is skipped."""
    deadline = time.monotonic() + WAIT_FOR_PEER_S
    while True:
        verdict = decide(study.get_trials(deepcopy=False), trial.number, params, limit)
        if verdict != "wait" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if verdict in (None, "wait"):
        trial.set_user_attr("claimed", True)
        return None
    return verdict


def _note(t: Any) -> str:
    a = t.user_attrs
    if a.get("skipped"):
        return f"skipped: {a['skipped']}"
    if a.get("error"):
        return f"error: {a['error']}"
    if t.state.name == "PRUNED" and "pruned_at" in a:
        return f"pruned at epoch {a['pruned_at']}"
    if t.state.name == "FAIL":
        return f"interrupted ({a['interrupted']})" if a.get("interrupted") else "lost (no heartbeat)"
    if t.state.name == "RUNNING":
        return f"running on {a.get('host', '?')}"
    return ""


def _result(
    settings: SweepSettings,
    study: optuna.Study,
    trained: list[int],
    errors: dict[int, str],
    stopped: str,
    command_line: Callable[[dict[str, Any]], str],
) -> SweepResult:
    records = [
        TrialRecord(
            number=t.number,
            state=t.state.name,
            value=t.value,
            params=dict(t.params),
            run=t.user_attrs.get("run"),
            note=_note(t),
            skipped=bool(t.user_attrs.get("skipped")),
        )  # fmt: skip
        for t in study.get_trials(deepcopy=False)
    ]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best: dict[str, Any] | None = None
    best_json: Path | None = None
    if complete:
        b = study.best_trial
        best = {
            "study": settings.study_name,
            "metric": settings.metric,
            "direction": DIRECTIONS[settings.metric],
            "trial": b.number,
            "value": b.value,
            "params": dict(b.params),
            "run": b.user_attrs.get("run"),
            "command": command_line(dict(b.params)),
        }
        best_json = Path(settings.out) / "best.json"
        atomic_write_text(best_json, json.dumps(best, indent=2, ensure_ascii=False) + "\n")
    return SweepResult(
        study=settings.study_name, storage=hidden_password(settings.storage_url), trials=records,
        trained=trained, errors=errors, best=best, best_json=best_json, stopped=stopped,
    )  # fmt: skip


def sweep_table(result: SweepResult, metric: Metric) -> RunsTable:
    """The `cvtool runs` table of the trials (their run folders found here), best `metric` first,
    with each trial's state and note; a trial run on another machine gets a row from the study."""
    from cvtool.evaluation.runs import RunsTable, runs_table

    shown = [t for t in result.trials if not t.skipped and t.state != "WAITING"]
    local = {Path(t.run).name: t for t in shown if t.run is not None and Path(t.run).is_dir()}
    table = runs_table([Path(t.run) for t in local.values() if t.run is not None]) if local else None
    columns = list(table.columns) if table else ["run", metric]
    columns.insert(columns.index("run") + 1, "state")
    columns.append("note")
    rows: list[dict[str, Any]] = []
    for row in table.rows if table else []:
        t = local.get(str(row["run"]))
        rows.append({**row, "state": t.state if t else None, "note": t.note if t else ""})
    for t in shown:
        if t.run is None or Path(t.run).name not in local:
            value = t.value if t.value is not None and not math.isnan(t.value) else None
            rows.append({"run": f"trial-{t.number}", "state": t.state, metric: value, "note": t.note})
    high = DIRECTIONS[metric] == "maximize"

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        v = row.get(metric)
        return (v is None, 0.0 if v is None else (-float(v) if high else float(v)))

    rows.sort(key=key)  # stable: ties keep the trial order
    return RunsTable(
        columns, [{c: r.get(c) for c in columns} for r in rows], table.runs if table else [],
        table.hyperparameters if table else [], table.failed if table else {}, table.notes if table else [],
    )  # fmt: skip
