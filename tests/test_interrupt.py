"""Ctrl-C during predict leaves the previous submission (or none), never a partial one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def test_sigint_during_predict_leaves_no_partial_submission(rgb_model, tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(0)
    # Noise PNGs decode slowly (no draft() for PNG): 1,500 copies keep one thread busy for many
    # seconds, so the interrupt lands mid-run.
    Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(d / "0.png")
    for i in range(1, 1500):
        os.link(d / "0.png", d / f"{i}.png")  # hard links: no disk space, same decode cost
    out = tmp_path / "submission.csv"
    out.write_text("id,label\nold,previous\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvtool", "predict", str(d), "--model", str(rgb_model), "-o", str(out),
         "--batch-size", "8", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3.0)  # imports and session start take about a second
    assert proc.poll() is None, "predict finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert out.read_text() == "id,label\nold,previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "submission.csv"]  # no temp files
