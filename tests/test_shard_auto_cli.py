"""`predict --shard auto`: the shard comes from SLURM or Kubernetes, and the parts merge whole."""

from __future__ import annotations

import json

from helpers_predict import image_folder, linear_onnx, read_csv
from typer.testing import CliRunner

from cvtool.cli import app

runner = CliRunner()


def test_kubernetes_indexed_job_shards_merge_to_the_whole_run(tmp_path, monkeypatch):
    model = linear_onnx(tmp_path / "m.onnx", ("a", "b"))
    images = image_folder(tmp_path / "test", [str(i) for i in range(1, 13)])
    whole = tmp_path / "whole.csv"
    assert runner.invoke(app, ["predict", str(images), "-m", str(model), "-o", str(whole)]).exit_code == 0
    for index in range(3):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        part = tmp_path / f"part{index}.csv"
        r = runner.invoke(app, ["predict", str(images), "-m", str(model), "-o", str(part),
                                "--shard", "auto", "--shards", "3"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / f"part{index}.shard.json").read_text())["shard"] == [index + 1, 3]
    merged = tmp_path / "merged.csv"
    parts = [str(tmp_path / f"part{i}.csv") for i in range(3)]
    r = runner.invoke(app, ["merge", *parts, "-o", str(merged)])
    assert r.exit_code == 0, r.output
    assert read_csv(merged) == read_csv(whole)


def test_shard_auto_without_a_scheduler_and_shards_alone_are_refused(tmp_path, monkeypatch):
    for var in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    model = linear_onnx(tmp_path / "m.onnx", ("a", "b"))
    images = image_folder(tmp_path / "test", ["1", "2"])
    r = runner.invoke(app, ["predict", str(images), "-m", str(model), "--shard", "auto"])
    assert r.exit_code == 2 and "neither SLURM_ARRAY_TASK_ID" in r.output
    r = runner.invoke(app, ["predict", str(images), "-m", str(model), "--shards", "3"])
    assert r.exit_code == 2 and "--shards goes with --shard auto" in r.output
