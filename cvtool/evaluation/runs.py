"""Training runs side by side: one row per run folder, the table at the core of a course report.

A run folder is what `cvtool train --out RUN` writes: config.json, metrics.csv, card.json,
best.pt, last.pt and run.json (the run's summary, rewritten atomically after every epoch; see
`write_run_record`). Runs from before run.json existed are summarised from config.json and
metrics.csv by the same function, so both give the same values. Test scores come from a
`cvtool evaluate` output inside the run folder: RUN/eval/metrics.json, or any RUN/*/metrics.json
with "accuracy" and "model" keys (the newest when there are several, and the row says so).

Torch-free. An old run's parameter count, when neither run.json nor card.json has it, comes from
a `count_params` callable the caller supplies (the command line passes one that uses torch).
Showing and writing the table, and the overlaid curves: cvtool.evaluation.runs_output.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.atomic import atomic_write_text
from cvtool.data import natural_key
from cvtool.errors import CvtoolError

__all__ = [
    "RUN_RECORD",
    "RunInfo",
    "RunsError",
    "RunsTable",
    "find_eval",
    "find_runs",
    "is_run_folder",
    "lr_drops",
    "read_run",
    "runs_table",
    "sort_runs",
    "summarize_history",
    "write_run_record",
]

RUN_RECORD = "run.json"
RUN_FILES = (RUN_RECORD, "config.json", "metrics.csv")  # any one makes a folder a run folder
# Never a hyper-parameter column: `out` differs between runs by definition, `arch` has its own.
NOT_HYPERPARAMETERS = frozenset({"out", "arch"})
FIXED_COLUMNS = ("run", "arch", "parameters")
RESULT_COLUMNS = ("epochs_run", "best_epoch", "val_acc", "val_loss", "train_s", "img_per_s")
TEST_COLUMNS = ("test_acc", "test_loss", "test_from")
HIGH_FIRST = ("val_acc", "test_acc", "img_per_s")  # --sort puts the largest first; others smallest

CountParams = Callable[[Path], "tuple[int, int] | None"]


class RunsError(CvtoolError, ValueError):
    """A path is not a run folder (nor a folder of runs), or a run's files cannot be read."""


@dataclass
class RunInfo:
    """What one run folder says about its run; `history` is metrics.csv as numbers."""

    path: Path
    name: str
    arch: str | None
    parameters: int | None  # None: unknown ("?")
    trainable: int | None
    config: dict[str, Any]
    history: list[dict[str, float]]
    summary: dict[str, Any]  # summarize_history(): the RESULT_COLUMNS values
    finished: bool | None  # None: cannot tell
    source: str  # "run.json" or "metrics.csv": where the summary came from
    test: dict[str, Any] | None = None  # test_acc, test_loss, test_from
    notes: list[str] = field(default_factory=list)

    def lr_drops(self) -> list[int]:
        """Epochs that started with a lower LR than the one before (as curves.png marks them)."""
        return lr_drops(self.history, self.config.get("schedule"))


def lr_drops(rows: Sequence[Mapping[str, Any]], schedule: str | None) -> list[int]:
    """Epochs that started with a lower LR than the epoch before, for metrics.csv-like rows.

    Only for per-epoch schedules (plateau, step) or an unknown one (None): cosine and one-cycle
    lower the LR every batch, and marking every epoch would say nothing.
    """
    if schedule not in ("plateau", "step", None):
        return []
    return [int(b["epoch"]) for a, b in zip(rows, rows[1:], strict=False) if float(b["lr"]) < float(a["lr"])]


@dataclass
class RunsTable:
    """Rows (column name → value; None = missing) in `columns` order, and the runs behind them."""

    columns: list[str]
    rows: list[dict[str, Any]]
    runs: list[RunInfo]
    hyperparameters: list[str]  # the config keys whose values differ between the runs
    failed: dict[str, str] = field(default_factory=dict)  # run folder → why it cannot be listed
    notes: list[str] = field(default_factory=list)


def summarize_history(history: Sequence[dict[str, Any]], monitor: str = "val_acc") -> dict[str, Any]:
    """Epochs run, the best epoch (as best.pt picks it) with its val acc/loss, seconds, images/s.

    The best epoch follows `monitor` exactly like training's Tracker: val_acc ties go to the
    lower loss. train_s sums the epochs' seconds (train + validation); img_per_s is the mean of
    the epochs' training throughput.
    """
    best: dict[str, Any] | None = None
    for r in history:
        acc, loss = float(r["val_acc"]), float(r["val_loss"])
        if best is None:
            better = True
        elif monitor == "val_loss":
            better = loss < best["val_loss"]
        else:
            better = acc > best["val_acc"] or (acc == best["val_acc"] and loss < best["val_loss"])
        if better:
            best = {"epoch": int(r["epoch"]), "val_acc": acc, "val_loss": loss}
    speeds = [float(r["images_per_s"]) for r in history]
    return {
        "epochs_run": len(history),
        "best_epoch": best["epoch"] if best else None,
        "val_acc": best["val_acc"] if best else None,
        "val_loss": best["val_loss"] if best else None,
        "train_s": round(sum(float(r["seconds"]) for r in history), 2) if history else None,
        "img_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
    }


def write_run_record(
    out: str | os.PathLike,
    *,
    arch: str,
    parameters: int,
    trainable: int,
    history: Sequence[dict[str, Any]],
    monitor: str,
    epochs_planned: int,
    finished: bool,
    stopped_early: bool = False,
) -> Path:
    """Write RUN/run.json atomically: the run's summary as `cvtool runs` lists it."""
    from cvtool import __version__

    s = summarize_history(history, monitor)
    record = {
        "cvtool_version": __version__,
        "arch": arch,
        "parameters": {"total": parameters, "trainable": trainable},
        "monitor": monitor,
        "epochs_planned": epochs_planned,
        "epochs_run": s["epochs_run"],
        "best_epoch": s["best_epoch"],
        "best_val_acc": s["val_acc"],
        "best_val_loss": s["val_loss"],
        "seconds": s["train_s"],
        "images_per_s": s["img_per_s"],
        "finished": finished,
        "stopped_early": stopped_early,
    }
    path = Path(out) / RUN_RECORD
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Run folders from the arguments, in order; a folder of runs expands one level, natural-sorted.

    Returns (runs, notes); a path that is neither a run nor holds any is a RunsError.
    """
    runs: list[Path] = []
    notes: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key in seen:
            notes.append(f"{p}: listed more than once; shown once")
        else:
            seen.add(key)
            runs.append(p)

    for given in paths:
        p = Path(given)
        if not p.exists():
            raise RunsError(f"{p}: not found")
        if not p.is_dir():
            raise RunsError(f"{p}: not a run folder (a file)")
        if is_run_folder(p):
            add(p)
            continue
        subs = sorted(
            (d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: natural_key(d.name),
        )
        inner = [d for d in subs if is_run_folder(d)]
        if not inner:
            raise RunsError(f"{p}: not a run folder (no {', '.join(RUN_FILES)}) and holds no run folders")
        for d in inner:
            add(d)
        others = [d.name for d in subs if d not in inner]
        if others:
            notes.append(f"{p}: passed over {len(others)} folder(s) that are not runs: {', '.join(others)}")
    return runs, notes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunsError(f"{path}: not valid JSON ({e})") from None


def _read_history(path: Path) -> list[dict[str, float]]:
    """metrics.csv as numbers; RunsError names the line and column of a needed value that is not one."""
    need = ("epoch", "lr", "val_loss", "val_acc", "seconds", "images_per_s")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or ())]
        if missing:
            raise RunsError(f"{path}: no column {', '.join(missing)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            row: dict[str, float] = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    if k in need:
                        raise RunsError(f"{path}: line {line}: {k} is not a number ({v!r})") from None
            rows.append(row)
    return rows


def _parameters(value: Any) -> tuple[int | None, int | None]:
    """(total, trainable) from {"total": …, "trainable": …} or a plain count."""
    if isinstance(value, dict):
        total, trainable = value.get("total"), value.get("trainable")
    else:
        total, trainable = value, None
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    return (total if ok(total) else None), (trainable if ok(trainable) else None)


def _finished(config: dict[str, Any], history: list[dict[str, float]], monitor: str) -> bool | None:
    """An old run is finished when it ran all its epochs or early stopping's patience ran out."""
    epochs = config.get("epochs")
    if not isinstance(epochs, int):
        return None
    if len(history) >= epochs:
        return True
    patience = config.get("patience")
    if not isinstance(patience, int) or not history:
        return False
    best, wait = None, 0  # epochs since a strict improvement of `monitor`, as Tracker counts them
    for r in history:
        v = r["val_loss"] if monitor == "val_loss" else -r["val_acc"]
        wait = 0 if best is None or v < best else wait + 1
        best = v if best is None or v < best else best
    return wait >= patience


def find_eval(run: Path) -> dict[str, Any] | None:
    """test_acc, test_loss, test_from from the newest `cvtool evaluate` metrics.json in RUN/*/."""
    found = []
    for p in run.glob("*/metrics.json"):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not an evaluate output
        if isinstance(m, dict) and "accuracy" in m and "model" in m:
            found.append((p.stat().st_mtime, p.parent.name == "eval", p, m))
    if not found:
        return None
    _, _, path, m = max(found, key=lambda t: (t[0], t[1], natural_key(t[2].parent.name)))
    where = path.parent.name + (f" (newest of {len(found)})" if len(found) > 1 else "")
    loss = m.get("log_loss")
    return {
        "test_acc": float(m["accuracy"]),
        "test_loss": float(loss) if isinstance(loss, int | float) else None,
        "test_from": where,
    }


def read_run(
    path: str | os.PathLike, count_params: CountParams | None = None, name: str | None = None
) -> RunInfo:
    """Everything `cvtool runs` shows about one run folder (RunsError for unreadable files)."""
    run = Path(path)
    config = _read_json(run / "config.json") if (run / "config.json").is_file() else {}
    if not isinstance(config, dict):
        raise RunsError(f"{run / 'config.json'}: not a training config")
    card_path = run / "card.json"
    card = _read_json(card_path) if card_path.is_file() else {}
    extra = card.get("extra", {}) if isinstance(card, dict) and isinstance(card.get("extra"), dict) else {}
    record = _read_json(run / RUN_RECORD) if (run / RUN_RECORD).is_file() else None
    if record is not None and not isinstance(record, dict):
        raise RunsError(f"{run / RUN_RECORD}: not a run record")
    history = _read_history(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    monitor = str(config.get("monitor") or (record or {}).get("monitor") or "val_acc")
    notes: list[str] = []

    summary = summarize_history(history, monitor)
    source = "metrics.csv"
    if record is not None:
        if not history or record.get("epochs_run") == len(history):
            source = RUN_RECORD
            summary = {
                "epochs_run": record.get("epochs_run"),
                "best_epoch": record.get("best_epoch"),
                "val_acc": record.get("best_val_acc"),
                "val_loss": record.get("best_val_loss"),
                "train_s": record.get("seconds"),
                "img_per_s": record.get("images_per_s"),
            }
        else:
            notes.append(f"{run}: run.json is older than metrics.csv; summarised from metrics.csv")
    finished = record.get("finished") if record is not None and source == RUN_RECORD else None
    if not isinstance(finished, bool):
        finished = _finished(config, history, monitor)

    total, trainable = _parameters((record or {}).get("parameters"))
    if total is None:
        total, trainable = _parameters(extra.get("parameters"))
    if total is None and count_params is not None:
        counted = count_params(run)
        if counted is not None:
            total, trainable = counted
    arch = (record or {}).get("arch") or config.get("arch") or extra.get("arch")
    return RunInfo(
        path=run,
        name=name or run.name,
        arch=str(arch) if arch else None,
        parameters=total,
        trainable=trainable,
        config=config,
        history=history,
        summary=summary,
        finished=finished,
        source=source,
        test=find_eval(run),
        notes=notes,
    )


def _differing(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (absent counts as a value)."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys and k not in NOT_HYPERPARAMETERS]
    missing = object()
    return [
        k
        for k in keys
        if len({json.dumps(c.get(k, missing), sort_keys=True, default=repr) for c in configs}) > 1
    ]


def runs_table(paths: Sequence[str | os.PathLike], count_params: CountParams | None = None) -> RunsTable:
    """One row per run found in `paths` (see find_runs); a run whose files are unreadable is failed."""
    folders, notes = find_runs(paths)
    names = [p.name for p in folders]
    runs: list[RunInfo] = []
    failed: dict[str, str] = {}
    for p, n in zip(folders, names, strict=True):
        try:
            # Two runs with the same folder name (a/x, b/x) are told apart by their paths.
            runs.append(read_run(p, count_params, n if names.count(n) == 1 else str(p)))
        except (RunsError, OSError) as e:
            failed[str(p)] = str(e) if isinstance(e, RunsError) else f"{e.filename}: {e.strerror or e}"
    hyper = _differing([r.config for r in runs]) if len(runs) > 1 else []
    columns = [*FIXED_COLUMNS, *hyper, *RESULT_COLUMNS]
    if any(r.finished is not True for r in runs):
        columns.insert(columns.index("epochs_run") + 1, "finished")
    if any(r.test for r in runs):
        columns += TEST_COLUMNS
    rows = []
    for r in runs:
        values: dict[str, Any] = {"run": r.name, "arch": r.arch, "parameters": r.parameters}
        values.update({k: r.config.get(k) for k in hyper})
        values.update(r.summary)
        values["finished"] = r.finished
        values.update(r.test or {})
        rows.append({c: values.get(c) for c in columns})
        notes += r.notes
    return RunsTable(columns, rows, runs, hyper, failed, notes)


def sort_runs(table: RunsTable, column: str) -> RunsTable:
    """The table sorted by `column`: accuracies and images/s largest first, the rest smallest
    first; missing values last; ties keep the given order."""
    if column not in table.columns:
        raise RunsError(f"unknown column {column!r}; the columns are: {', '.join(table.columns)}")

    def key(i: int) -> tuple:
        v = table.rows[i][column]
        if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
            return (0, float(v))
        return (1, natural_key(json.dumps(v) if not isinstance(v, str) else v))

    present = [i for i in range(len(table.rows)) if table.rows[i][column] is not None]
    absent = [i for i in range(len(table.rows)) if table.rows[i][column] is None]
    present.sort(key=key, reverse=column in HIGH_FIRST)  # stable either way: ties keep their order
    order = present + absent
    return RunsTable(
        table.columns,
        [table.rows[i] for i in order],
        [table.runs[i] for i in order],
        table.hyperparameters,
        table.failed,
        table.notes,
    )
