"""SIGTERM (what SLURM, Kubernetes and `timeout` send) and SIGINT stop `cvtool train` cleanly.

A real subprocess each time: the handler is the one `cvtool.cli.app.main` installs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.errors import Interrupted
from cvtool.train.checkpoint import deferred_interrupts, load_checkpoint

EPOCHS = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("signals") / "shapes", per_class=12, seed=6)


def _start(data: Path, run: Path, workers: int, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "cvtool", "train", str(data), "--out", str(run), "--arch", "mlp",
            "--epochs", str(EPOCHS), "--batch-size", "4", "--workers", str(workers)]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for_first_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be signalled"


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the DataLoader's workers)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(d.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_training_cleanly_and_resume_finishes(data, tmp_path):
    run = tmp_path / "run"
    proc = _start(data, run, workers=1)
    _wait_for_first_checkpoint(proc, run)
    workers = _children(proc.pid)
    assert workers  # the training and validation loaders' worker processes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 128 + signal.SIGTERM == 143, err
    assert f"interrupted; continue with: cvtool train --resume {run}" in err
    assert "Traceback" not in err
    stopped_at = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= stopped_at < EPOCHS
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "DataLoader workers outlived the run"

    r = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert f"resuming at epoch {stopped_at + 1} of {EPOCHS}" in r.output
    assert load_checkpoint(run / "last.pt")["epoch"] == EPOCHS


def test_sigterm_to_the_whole_process_group_with_workers(data, tmp_path):
    """SLURM's scancel signals every process of the job, DataLoader workers included: they stop
    quietly, so the main process does not fail with "DataLoader worker killed by signal"."""
    run = tmp_path / "run"
    proc = _start(data, run, workers=1, start_new_session=True)
    _wait_for_first_checkpoint(proc, run)
    time.sleep(0.3)  # into the next epoch, where the workers are decoding
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert f"interrupted; continue with: cvtool train --resume {run}" in err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    load_checkpoint(run / "last.pt")


def test_sigint_interrupts_even_when_the_parent_ignores_it(data, tmp_path):
    """nohup and background jobs of a script start their children with SIGINT ignored."""
    run = tmp_path / "run"
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    proc = _start(data, run, workers=0, preexec_fn=ignore)
    _wait_for_first_checkpoint(proc, run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT == 130, err
    assert f"interrupted; continue with: cvtool train --resume {run}" in err
    load_checkpoint(run / "last.pt")
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert os.path.getsize(run / "last.pt") > 0


def test_deferred_interrupts_deliver_the_signal_after_the_block():
    def interrupt(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        done = []
        with pytest.raises(Interrupted) as caught:
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # a handler would have run by now
                done.append("saved")
        assert done == ["saved"] and caught.value.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is interrupt  # restored
        with deferred_interrupts():  # nothing received: nothing raised
            done.append("again")
        assert done == ["saved", "again"]
    finally:
        signal.signal(signal.SIGTERM, previous)
