"""`cvtool train` under torchrun: 2 processes, gloo on the CPU, rank 0 writes once."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import torch
from conftest import make_image_folder

from cvtool.data import scan_image_folder, stratified_split
from cvtool.images import load_and_preprocess
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint


def test_torchrun_two_processes_on_cpu(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, seed=5)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "cvtool", "train", str(data), "--out", str(run), "--arch", "mlp", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--val-split", "0.25", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    # Only rank 0 logs and writes: one epoch line, one metrics row, the process count said once.
    assert r.stdout.count("epoch 1/1") == 1, r.stdout
    assert r.stdout.count("2 processes") == 1
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "card.json", "config.json", "curves.png", "last.pt", "metrics.csv", "run.json",
    ]  # fmt: skip

    # The recorded validation accuracy covers both ranks' shards: recompute it in one process.
    ckpt = load_checkpoint(run / "best.pt")
    net, card = model_from_checkpoint(ckpt)
    samples = scan_image_folder(data)
    _, val_idx = stratified_split(samples.labels, 0.25, 0)
    x = np.stack([load_and_preprocess(samples.paths[i], card) for i in val_idx])
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(1).numpy()
    acc = float((pred == np.array([samples.labels[i] for i in val_idx])).mean())
    assert float(rows[0]["val_acc"]) == round(acc, 6)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP
