"""`cvtool train --resume RUN`: writes into RUN, takes DATA from the command line, names what it ignores."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.train.checkpoint import load_checkpoint
from cvtool.train.config import TrainConfig
from cvtool.train.loop import train

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "shapes", per_class=8, seed=4)


def _cut_run(data, run):
    """A run of 2 epochs stopped after the first (as Ctrl-C would stop it)."""

    def stop(epoch, _row):
        if epoch == 1:
            raise KeyboardInterrupt

    cfg = TrainConfig(data=str(data), out=str(run), arch="mlp", epochs=2, batch_size=8, workers=0,
                      val_split=0.25)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda _: None, on_epoch_end=stop)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_resuming_a_copied_run_writes_into_the_copy(data, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    _cut_run(data, original)
    shutil.copytree(original, copy)
    before = _snapshot(original)

    r = runner.invoke(app, ["train", "--resume", str(copy / "last.pt")])
    assert r.exit_code == 0, r.output
    assert "resuming at epoch 2 of 2" in r.output
    assert _snapshot(original) == before  # the original run is untouched
    assert load_checkpoint(copy / "last.pt")["epoch"] == 2
    assert json.loads((copy / "config.json").read_text())["out"] == str(copy)
    assert load_checkpoint(copy / "last.pt")["config"]["out"] == str(copy)


def test_data_given_on_resume_replaces_the_recorded_path(data, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(data, tmp_path / "first")
    run = tmp_path / "run"
    _cut_run(tmp_path / "first", run)
    (tmp_path / "first").rename(moved)  # the recorded path no longer exists

    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert (
        r.exit_code == 2 and str(tmp_path / "first") in r.output and "cvtool train DATA --resume" in r.output
    )

    r = runner.invoke(app, ["train", str(moved), "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert "ignoring" not in r.output  # DATA is used, not ignored
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)


def test_data_with_other_classes_is_refused_on_resume(data, tmp_path):
    run = tmp_path / "run"
    _cut_run(data, run)
    before = _snapshot(run)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "stripes").rename(other / "zebra")

    r = runner.invoke(app, ["train", str(other), "--resume", str(run)])
    assert r.exit_code == 2, r.output
    assert "zebra" in r.output and "circle, square, stripes" in r.output
    assert _snapshot(run) == before


def test_every_flag_ignored_on_resume_is_named(data, tmp_path):
    run = tmp_path / "run"
    _cut_run(data, run)
    elsewhere = tmp_path / "elsewhere"
    args = [
        "train",
        "--resume",
        str(run),
        "--out",
        str(elsewhere),
        "--epochs",
        "9",
        "--recipe",
        "fashion-mnist",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    warning = next(ln for ln in r.output.splitlines() if "ignoring" in ln)
    for flag in ("--out", "--epochs", "--recipe"):
        assert flag in warning, warning
    assert not elsewhere.exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # --epochs 9 was not applied
