"""evaluate --failures/--occlusion, occlusion, filters and activations run where torch cannot be imported."""

from __future__ import annotations

import csv
import json

from test_torch_boundary import run_without_torch

from cvtool.onnxtools.layers import list_layers


def _ok(r):
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout


def test_evaluate_with_failures_and_occlusion_without_torch(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    out = tmp_path / "eval"
    args = ["evaluate", str(test_dir), "--labels", str(labels), "--model", str(rgb_model), "-o", str(out)]
    _ok(run_without_torch([*args, "--failures", "100", "--occlusion", "1", "--window", "8", "--stride", "8"]))
    metrics = json.loads((out / "metrics.json").read_text())
    cm = [[int(v) for v in row[1:]] for row in list(csv.reader((out / "confusion_matrix.csv").open()))[1:]]
    off = sum(map(sum, cm)) - sum(cm[i][i] for i in range(len(cm)))
    assert len([p for p in (out / "failures").rglob("*") if p.is_file()]) == off
    assert metrics["occlusion"]["images"] >= 1 and list((out / "occlusion").glob("*.npy"))
    assert (out / "report.html").stat().st_size > 10_000


def test_explain_commands_without_torch(rgb_model, shapes_train, tmp_path):
    image = shapes_train / "circle" / "0.png"
    occ = tmp_path / "occ"
    _ok(
        run_without_torch(
            ["occlusion", str(image), "--model", str(rgb_model), "--window", "8", "-o", str(occ)]
        )
    )
    assert len(list(occ.glob("*.npy"))) == 1

    _ok(
        run_without_torch(
            ["filters", str(rgb_model), "--compare", str(rgb_model), "-o", str(tmp_path / "f.png")]
        )
    )
    assert (tmp_path / "f.png").is_file()

    r = run_without_torch(["activations", str(rgb_model), "--list-layers"])
    _ok(r)
    assert "Relu" in r.stdout
    relu = next(layer.tensor for layer in list_layers(rgb_model) if layer.op == "Relu")
    acts = tmp_path / "acts"
    _ok(run_without_torch(["activations", str(rgb_model), str(image), "--layer", relu, "-o", str(acts)]))
    assert len(list(acts.glob("*.png"))) == 1 and len(list(acts.glob("*.npy"))) == 1
