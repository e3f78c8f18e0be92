"""`cvtool runs`: training runs side by side — values from real tiny runs, run.json and the
fallbacks for older runs, CSV/Markdown output, sorting, test scores, the overlay plot."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_image_folder
from test_torch_boundary import run_without_torch
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.cli.runs_cmd import _checkpoint_params
from cvtool.evaluation.runs import find_runs, runs_table, sort_runs, summarize_history
from cvtool.evaluation.runs_output import format_value, overlay_figure
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint
from cvtool.train.loop import TrainConfig, train

runner = CliRunner()
TRAIN = ["--arch", "mlp", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--val-split", "0.25",
         "--schedule", "step", "--step-size", "1"]  # fmt: skip
LRS = {"a": 1e-3, "b": 3e-3}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two real 2-epoch runs, runs/a and runs/b, that differ only in --lr (a step schedule: LR drops)."""
    root = tmp_path_factory.mktemp("runs")
    data = make_image_folder(root / "data", per_class=8, seed=3)
    for name, lr in LRS.items():
        r = runner.invoke(
            app, ["train", str(data), *TRAIN, "--lr", str(lr), "--out", str(root / "runs" / name)]
        )
        assert r.exit_code == 0, r.output
    return root / "runs"


@pytest.fixture
def runs_copy(runs_dir, tmp_path) -> Path:
    shutil.copytree(runs_dir, tmp_path / "runs")
    return tmp_path / "runs"


def _metrics(run: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in r.items()} for r in csv.DictReader((run / "metrics.csv").open())]


def _params(run: Path) -> int:
    model, _ = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    return sum(p.numel() for p in model.parameters())


def fake_run(path: Path, val_acc: list[float], val_loss: list[float], speed: float = 100.0, **config) -> Path:
    """A run folder as an older cvtool left it: config.json and metrics.csv, nothing else."""
    path.mkdir(parents=True)
    cfg = {"data": "data/train", "out": str(path), "arch": "cnn4", "epochs": len(val_acc), "lr": 0.001,
           "schedule": "none", "seed": 0, "monitor": "val_acc", **config}  # fmt: skip
    (path / "config.json").write_text(json.dumps(cfg))
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"]
        )
        for i, (acc, loss) in enumerate(zip(val_acc, val_loss, strict=True), start=1):
            w.writerow([i, cfg["lr"], 1.0, 0.5, loss, acc, 10.0 * i, speed])
    return path


def test_two_runs_differ_in_lr_only_and_show_their_best_epoch(runs_dir):
    t = runs_table([runs_dir / "a", runs_dir / "b"])
    # Equal in both runs (arch, optimizer, schedule, seed, epochs …) is left out; `out` never shows.
    assert t.hyperparameters == ["lr"]
    assert t.columns == ["run", "arch", "parameters", "lr", "epochs_run", "best_epoch", "val_acc", "val_loss",
                         "train_s", "img_per_s"]  # fmt: skip
    for row, run in zip(t.rows, t.runs, strict=True):
        name = row["run"]
        history = _metrics(runs_dir / name)
        best = max(history, key=lambda h: (h["val_acc"], -h["val_loss"]))  # ties: the lower loss
        assert run.source == "run.json"
        assert row["lr"] == LRS[name] and row["arch"] == "mlp"
        assert row["val_acc"] == max(h["val_acc"] for h in history)
        assert row["best_epoch"] == int(best["epoch"]) and row["val_loss"] == best["val_loss"]
        assert row["epochs_run"] == 2
        assert row["train_s"] == pytest.approx(sum(h["seconds"] for h in history), abs=0.006)
        assert row["img_per_s"] == pytest.approx(sum(h["images_per_s"] for h in history) / 2, abs=0.06)
        assert row["parameters"] == _params(runs_dir / name)
        record = json.loads((runs_dir / name / "run.json").read_text())
        assert record["finished"] is True and record["epochs_run"] == 2 and record["epochs_planned"] == 2
        assert record["parameters"] == {"total": row["parameters"], "trainable": row["parameters"]}
        assert record["best_val_acc"] == row["val_acc"] and record["cvtool_version"]

    r = runner.invoke(app, ["runs", str(runs_dir / "a"), str(runs_dir / "b")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    header = next(line for line in lines if "run" in line and "lr" in line)
    assert "optimizer" not in header and "schedule" not in header and "seed" not in header
    row_a = next(line for line in lines if line.startswith("│ a "))
    assert (
        "0.001" in row_a
        and f"{t.rows[0]['parameters']:,}" in row_a
        and f"{t.rows[0]['val_acc']:.4f}" in row_a
    )


def test_csv_and_markdown_outputs(runs_dir, tmp_path):
    t = runs_table([runs_dir])
    r = runner.invoke(app, ["runs", str(runs_dir), "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.reader((tmp_path / "x.csv").open()))
    assert rows[0] == t.columns
    assert [float(v) for v in rows[1][3:]] == [t.rows[0][c] for c in t.columns[3:]]  # raw values, no rounding
    assert rows[2][:3] == ["b", "mlp", str(t.rows[1]["parameters"])]

    r = runner.invoke(app, ["runs", str(runs_dir), "-o", str(tmp_path / "x.md")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "x.md").read_text().splitlines()
    header = (
        "run | arch | parameters | lr | epochs_run | best_epoch | val_acc | val_loss | train_s | img_per_s"
    )
    assert md[0] == f"| {header} |"
    assert md[1] == "|---|---|" + "---:|" * 8
    a = t.rows[0]
    assert md[2] == (
        f"| a | mlp | {a['parameters']:,} | 0.001 | 2 | {a['best_epoch']} | {a['val_acc']:.4f} | "
        f"{a['val_loss']:.4f} | {a['train_s']:.1f} | {a['img_per_s']:.0f} |"
    )
    assert len(md) == 4


def test_sort_by_any_column(tmp_path):
    fake_run(tmp_path / "r1", [0.5, 0.6], [0.9, 0.8], speed=300, lr=0.1)
    fake_run(tmp_path / "r2", [0.7, 0.9], [0.5, 0.3], speed=100, lr=0.01)
    fake_run(tmp_path / "r3", [0.7, 0.6], [0.6, 0.4], speed=200, lr=0.05)
    t = runs_table([tmp_path])
    assert [r["run"] for r in t.rows] == ["r1", "r2", "r3"]  # the order given
    order = {c: [r["run"] for r in sort_runs(t, c).rows] for c in ("val_acc", "val_loss", "img_per_s", "lr")}
    assert order == {
        "val_acc": ["r2", "r3", "r1"],  # largest first
        "val_loss": ["r2", "r3", "r1"],  # smallest first: 0.3, 0.6 (r3's best epoch is 1), 0.8
        "img_per_s": ["r1", "r3", "r2"],  # fastest first
        "lr": ["r2", "r3", "r1"],
    }
    sorted_t = sort_runs(t, "val_acc")
    assert [r.name for r in sorted_t.runs] == ["r2", "r3", "r1"]  # the runs follow their rows (plot order)

    r = runner.invoke(app, ["runs", str(tmp_path), "--sort", "val_loss", "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert [row["run"] for row in csv.DictReader((tmp_path / "s.csv").open())] == ["r2", "r3", "r1"]
    r = runner.invoke(app, ["runs", str(tmp_path), "--sort", "accuracy"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: unknown column 'accuracy'; the columns are: run, arch, parameters, lr, epochs_run, "
        "best_epoch, val_acc, val_loss, train_s, img_per_s"
    )


def test_missing_values_sort_last(tmp_path):
    fake_run(tmp_path / "r1", [0.5], [0.9])
    fake_run(tmp_path / "r2", [0.7], [0.5])
    fake_run(tmp_path / "r3", [0.6], [0.6])
    (tmp_path / "r2" / "eval").mkdir()
    (tmp_path / "r2" / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.4, "model": "m.onnx"}))
    (tmp_path / "r3" / "eval").mkdir()
    (tmp_path / "r3" / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.8, "model": "m.onnx"}))
    t = runs_table([tmp_path])
    assert [r["run"] for r in sort_runs(t, "test_acc").rows] == ["r3", "r2", "r1"]
    assert [r["run"] for r in sort_runs(t, "test_loss").rows] == ["r1", "r2", "r3"]  # none has one: as given


def test_old_run_without_run_json_lists_the_same_values(runs_dir, runs_copy):
    new = runs_table([runs_dir])
    for name in LRS:
        (runs_copy / name / "run.json").unlink()
    old = runs_table([runs_copy], count_params=_checkpoint_params)  # what the command line passes
    assert [r.source for r in old.runs] == ["metrics.csv", "metrics.csv"]
    assert old.rows == new.rows  # parameters from best.pt through torch; the rest from metrics.csv
    assert [(r.parameters, r.trainable, r.finished) for r in old.runs] == [
        (r.parameters, r.trainable, True) for r in new.runs
    ]

    # Without a way to count, the count is unknown, shown as "?".
    bare = runs_table([runs_copy])
    assert [r["parameters"] for r in bare.rows] == [None, None]
    assert format_value("parameters", None) == "?"
    # card.json's extra, when it has the count, comes before the checkpoint.
    card = json.loads((runs_copy / "a" / "card.json").read_text())
    card["extra"]["parameters"] = 1234
    (runs_copy / "a" / "card.json").write_text(json.dumps(card))
    assert runs_table([runs_copy / "a"]).rows[0]["parameters"] == 1234


def test_old_run_lists_without_torch(runs_copy):
    for name in LRS:
        (runs_copy / name / "run.json").unlink()
    p = run_without_torch(["runs", str(runs_copy), "-o", str(runs_copy / "t.csv")])
    assert p.returncode == 0, p.stderr
    assert "LEAKED []" in p.stdout
    rows = list(csv.DictReader((runs_copy / "t.csv").open()))
    assert [r["parameters"] for r in rows] == ["", ""]  # unknown; the table shows "?"
    assert [r["lr"] for r in rows] == ["0.001", "0.003"]


def test_summary_matches_the_trackers_choice():
    rows = [
        {"epoch": 1, "val_acc": 0.8, "val_loss": 0.5, "seconds": 1.0, "images_per_s": 10.0},
        {
            "epoch": 2,
            "val_acc": 0.8,
            "val_loss": 0.4,
            "seconds": 2.0,
            "images_per_s": 20.0,
        },  # tie: lower loss
        {"epoch": 3, "val_acc": 0.7, "val_loss": 0.3, "seconds": 3.0, "images_per_s": 30.0},
    ]
    assert summarize_history(rows, "val_acc") == {
        "epochs_run": 3, "best_epoch": 2, "val_acc": 0.8, "val_loss": 0.4, "train_s": 6.0, "img_per_s": 20.0,
    }  # fmt: skip
    assert summarize_history(rows, "val_loss")["best_epoch"] == 3


def test_test_scores_from_the_newest_evaluate_output(runs_copy):
    ev = runs_copy / "a" / "eval"
    ev.mkdir()
    # The keys `cvtool evaluate` writes (EvalResult.metrics_json), trimmed to a few.
    metrics = {"n": 24, "accuracy": 0.75, "log_loss": 0.61, "model": "runs/a/model.onnx", "provider": "cpu"}
    (ev / "metrics.json").write_text(json.dumps(metrics))
    t = runs_table([runs_copy])
    assert t.columns[-3:] == ["test_acc", "test_loss", "test_from"]
    assert [(r["test_acc"], r["test_loss"], r["test_from"]) for r in t.rows] == [
        (0.75, 0.61, "eval"),
        (None, None, None),  # b has no evaluate output
    ]
    # A second evaluate output, newer: it is used, and the row says there were two.
    tta = runs_copy / "a" / "eval_tta"
    tta.mkdir()
    (tta / "metrics.json").write_text(json.dumps({**metrics, "accuracy": 0.8, "log_loss": 0.5}))
    (runs_copy / "a" / "other").mkdir()  # a metrics.json that evaluate did not write: not a candidate
    (runs_copy / "a" / "other" / "metrics.json").write_text(json.dumps({"accuracy": 0.1}))
    os.utime(ev / "metrics.json", (1_000_000, 1_000_000))
    row = runs_table([runs_copy / "a"]).rows[0]
    assert (row["test_acc"], row["test_loss"], row["test_from"]) == (0.8, 0.5, "eval_tta (newest of 2)")
    r = runner.invoke(app, ["runs", str(runs_copy)])
    assert r.exit_code == 0 and "eval_tta (newest of 2)" in r.output and "0.8000" in r.output


def test_overlay_has_one_line_per_run_per_panel_and_lr_drops(runs_dir, tmp_path):
    t = runs_table([runs_dir])
    fig = overlay_figure(t.runs)
    acc_ax, loss_ax = fig.axes
    for ax, key in ((acc_ax, "val_acc"), (loss_ax, "val_loss")):
        solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert [ln.get_label() for ln in solid] == ["a", "b"]
        for ln, run in zip(solid, t.runs, strict=True):
            assert list(ln.get_xdata()) == [1, 2]
            assert list(ln.get_ydata()) == [h[key] for h in _metrics(runs_dir / run.name)]
        # The step schedule (step size 1) lowers the LR at epoch 2: one dashed line per run, its colour.
        assert len(dashed) == 2
        for d, s in zip(dashed, solid, strict=True):
            assert list(d.get_xdata()) == [2, 2] and d.get_color() == s.get_color()
    assert solid[0].get_color() != solid[1].get_color()
    assert [x.get_text() for x in fig.legends[0].get_texts()] == ["a", "b", "LR drop"]

    r = runner.invoke(app, ["runs", str(runs_dir), "--plot", str(tmp_path / "curves.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_parent_folder_expands_in_natural_order(tmp_path):
    fake_run(tmp_path / "runs" / "run10", [0.5], [0.9])
    fake_run(tmp_path / "runs" / "run2", [0.6], [0.8])
    (tmp_path / "runs" / "logs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("")
    runs, notes = find_runs([tmp_path / "runs"])
    assert [p.name for p in runs] == ["run2", "run10"]
    assert notes == [f"{tmp_path / 'runs'}: passed over 1 folder(s) that are not runs: logs"]
    # A run named again beside its parent is listed once.
    runs, notes = find_runs([tmp_path / "runs" / "run10", tmp_path / "runs"])
    assert [p.name for p in runs] == ["run10", "run2"]
    assert notes[0] == f"{tmp_path / 'runs' / 'run10'}: listed more than once; shown once"


def test_runs_with_the_same_name_are_told_apart_by_path(tmp_path):
    fake_run(tmp_path / "x" / "fm", [0.5], [0.9])
    fake_run(tmp_path / "y" / "fm", [0.6], [0.8])
    t = runs_table([tmp_path / "x" / "fm", tmp_path / "y" / "fm"])
    assert [r["run"] for r in t.rows] == [str(tmp_path / "x" / "fm"), str(tmp_path / "y" / "fm")]
    assert "out" not in t.columns  # it differs, but by definition


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    r = runner.invoke(app, ["runs", str(tmp_path / "empty")])
    assert r.exit_code == 2
    assert r.output == (
        f"error: {tmp_path / 'empty'}: not a run folder (no run.json, config.json, metrics.csv) "
        "and holds no run folders\n"
    )
    r = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert r.exit_code == 2 and r.output == f"error: {tmp_path / 'missing'}: not found\n"


def test_an_unreadable_run_is_listed_and_the_others_still_show(tmp_path):
    fake_run(tmp_path / "good", [0.5], [0.9])
    bad = fake_run(tmp_path / "bad", [0.5], [0.9])
    (bad / "metrics.csv").write_text("epoch,lr,val_loss,val_acc,seconds,images_per_s\n1,0.1,oops,0.5,1,2\n")
    r = runner.invoke(app, ["runs", str(tmp_path), "-o", str(tmp_path / "t.csv")])
    assert r.exit_code == 1
    assert (
        f"could not list {bad}: {bad / 'metrics.csv'}: line 2: val_loss is not a number ('oops')" in r.output
    )
    assert [row["run"] for row in csv.DictReader((tmp_path / "t.csv").open())] == ["good"]


def test_an_unfinished_run_says_so(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, seed=1)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "cut"), arch="mlp", epochs=3, batch_size=8,
                      workers=0, val_split=0.25)  # fmt: skip

    def stop(epoch, _row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda _: None, on_epoch_end=stop)
    record = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (record["finished"], record["epochs_run"], record["epochs_planned"]) == (False, 1, 3)
    fake_run(tmp_path / "done", [0.5, 0.6], [0.9, 0.8], arch="mlp")
    t = runs_table([tmp_path / "cut", tmp_path / "done"])
    assert t.columns[t.columns.index("epochs_run") + 1] == "finished"
    assert [r["finished"] for r in t.rows] == [False, True]
    # An old run cut short: fewer epochs than planned and no early stopping.
    fake_run(tmp_path / "old", [0.5, 0.6], [0.9, 0.8], epochs=5)
    assert runs_table([tmp_path / "old"]).runs[0].finished is False
    # An old run that stopped early: patience 1 ran out after epoch 2.
    fake_run(tmp_path / "early", [0.6, 0.5], [0.9, 0.8], epochs=5, patience=1)
    assert runs_table([tmp_path / "early"]).runs[0].finished is True
