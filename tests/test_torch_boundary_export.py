"""inspect, card set/show and quantize work where torch cannot be imported; cvtool.onnxtools
never imports it."""

from __future__ import annotations

import ast
import json

import onnx
from test_torch_boundary import BANNED, PACKAGE, run_without_torch

from cvtool.onnxtools.card_edit import read_card

TORCH_FREE = sorted((PACKAGE / "onnxtools").glob("*.py")) + [
    PACKAGE / "cli" / f for f in ("inspect_cmd.py", "card_cmd.py", "quantize_cmd.py", "export_cmd.py")
]


def test_onnxtools_never_imports_torch():
    assert len(TORCH_FREE) >= 10
    for path in TORCH_FREE:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"


def test_inspect_card_and_quantize_without_torch(rgb_model, shapes_train, shapes_test, tmp_path):
    r = run_without_torch(["inspect", str(rgb_model), "--json"])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout
    assert json.loads(r.stdout.split("LEAKED")[0])["card"]["class_names"] == ["circle", "square", "stripes"]

    out = tmp_path / "renamed.onnx"
    r = run_without_torch(["card", "set", str(rgb_model), "--classes", "a,b,c", "-o", str(out)])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout
    assert read_card(onnx.load(str(out))).class_names == ("a", "b", "c")
    r = run_without_torch(["card", "show", str(out)])
    assert r.returncode == 0 and '"a"' in r.stdout and "LEAKED []" in r.stdout

    test_dir, labels = shapes_test
    q = tmp_path / "q.onnx"
    r = run_without_torch(
        ["quantize", str(rgb_model), "--calib", str(shapes_train), "--calib-n", "16", "-o", str(q)]
        + ["--verify", str(test_dir), "--labels", str(labels), "--bench-batch", "4"]
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout and "INT8 vs float32 on" in r.stdout
    assert read_card(onnx.load(str(q))).extra["precision"] == "int8"


def test_export_without_torch_says_how_to_install(rgb_model, tmp_path):
    r = run_without_torch(["export", str(rgb_model.with_suffix(".pt")), "-o", str(tmp_path / "m.onnx")])
    assert r.returncode == 2
    assert 'pip install "cvtool[train]"' in r.stderr
