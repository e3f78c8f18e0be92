"""The one error handler: expected errors are one line and exit 2, a traceback only with --debug;
SIGTERM is handled like Ctrl-C (previous outputs intact, no temporary files, exit 128 + signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers_predict import image_folder, linear_onnx
from PIL import Image

NAMES = ("a", "b", "c")


def cvtool(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cvtool", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    return linear_onnx(d / "m.onnx", NAMES), image_folder(d / "test", ["1", "2", "3"])


def test_expected_error_is_one_line_and_exit_2(small, tmp_path):
    model, _ = small
    r = cvtool("predict", str(tmp_path / "nowhere"), "-m", str(model))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'nowhere'}: not a directory"
    assert "Traceback" not in r.stderr + r.stdout


def test_debug_shows_the_traceback(small, tmp_path):
    model, _ = small
    for extra, env in ((["--debug"], None), ([], {"CVTOOL_DEBUG": "1"})):
        r = cvtool(*extra, "predict", str(tmp_path / "nowhere"), "-m", str(model), env=env)
        assert r.returncode != 0
        assert "Traceback" in r.stderr and "SourceError" in r.stderr


def test_os_error_names_the_path(small, tmp_path):
    model, images = small
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is expected")
    r = cvtool("predict", str(images), "-m", str(model), "-o", str(blocker / "sub" / "s.csv"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blocker}/sub/") and "Not a directory" in lines[0]


def test_bad_choice_is_refused_by_the_parser(small):
    model, images = small
    r = cvtool("predict", str(images), "-m", str(model), "--on-error", "ignore", env={"COLUMNS": "200"})
    assert r.returncode == 2
    refused = "Invalid value for '--on-error': Value error, 'ignore' is not one of 'fill', 'skip', 'fail'"
    assert refused in r.stderr


def _slow_folder(d):
    """1,500 hard links to one 1000² noise PNG: one decode thread is busy for many seconds."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(d / "0.png")
    for i in range(1, 1500):
        os.link(d / "0.png", d / f"{i}.png")
    return d


def _interrupt_midway(args: list[str], sig: int, preexec=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvtool", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
    )  # fmt: skip
    time.sleep(3.0)  # imports and session start take about a second
    assert proc.poll() is None, "the command finished before it could be interrupted"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_predict_keeps_the_previous_submission(rgb_model, tmp_path, sig):
    d = _slow_folder(tmp_path / "many")
    out = tmp_path / "submission.csv"
    out.write_text("id,label\nold,previous\n")
    args = ["predict", str(d), "-m", str(rgb_model), "-o", str(out), "--batch-size", "8", "--workers", "1"]
    # SIGINT with the parent ignoring it (nohup, a script's background job): main() restores it.
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sig == signal.SIGINT else None
    proc = _interrupt_midway(args, sig, preexec)
    assert proc.returncode == 128 + sig
    assert out.read_text() == "id,label\nold,previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "submission.csv"]  # no temp files


def test_sigterm_during_evaluate_leaves_the_previous_results(rgb_model, tmp_path):
    root = tmp_path / "data"
    _slow_folder(root / "circle")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5}')
    args = ["evaluate", str(root), "-m", str(rgb_model), "-o", str(out), "-b", "8", "--workers", "1"]
    proc = _interrupt_midway(args, signal.SIGTERM)
    assert proc.returncode == 143
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == '{"accuracy": 0.5}'
