"""Training faults: a killed run resumes, a kill during a save keeps the old checkpoint, NaN stops."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_image_folder
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.train import checkpoint as ckpt_mod
from cvtool.train.checkpoint import load_checkpoint, save_checkpoint
from cvtool.train.config import TrainConfig
from cvtool.train.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("faults") / "shapes", per_class=12, seed=5)


def test_sigkill_mid_run_then_resume_finishes(data, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "cvtool", "train", str(data), "--out", str(run), "--arch", "mlp",
            "--epochs", "8", "--batch-size", "8", "--workers", "0"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into a later epoch, possibly mid-save
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(run / "last.pt")["epoch"]  # loadable whatever the kill hit
    assert 1 <= killed_at < 8
    r = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert f"resuming at epoch {killed_at + 1} of 8" in r.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 8


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"arch": "mlp", "epoch": 1, "model": {"w": torch.ones(3)}})

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"arch": "mlp", "epoch": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    kept = load_checkpoint(path)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file was removed


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    def poison_after_first_epoch(epoch, _row):
        if epoch == 1:  # from now on the loss is NaN
            monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: torch.tensor(math.nan))

    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="mlp", epochs=3, batch_size=8,
                      workers=0, val_split=0.25)  # fmt: skip
    with pytest.raises(FloatingPointError, match="loss became nan.*lower --lr"):
        train(cfg, log=lambda _: None, on_epoch_end=poison_after_first_epoch)
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(tmp_path / "run" / name)
        assert ck["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
