"""predict and evaluate work where torch cannot be imported; torch-free modules never import it."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import cvtool

PACKAGE = Path(cvtool.__file__).parent
TORCH_FREE = [
    PACKAGE / f
    for f in ("__init__.py", "errors.py", "contract.py", "images.py", "data.py", "data_split.py", "atomic.py",
              "softmax.py", "tta.py", "decode.py")
]  # fmt: skip
for folder in ("cli", "infer", "onnxtools", "evaluation", "bundle"):
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, f"no modules under {folder}/"  # a renamed folder must not empty the check
    TORCH_FREE += files
BANNED = {"torch", "torchvision", "onnxscript"}

BLOCKER = """
import sys
for name in {banned!r}:
    sys.modules[name] = None  # makes `import name` raise ImportError
from cvtool.cli import app
try:
    app({args!r})
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
leaked = sorted(n for n in {banned!r} if sys.modules.get(n) is not None)
print("LEAKED", leaked)
sys.exit(code)
"""


def run_without_torch(args: list[str]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(banned=sorted(BANNED), args=args)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torch_free_modules_do_not_import_torch():
    for path in TORCH_FREE:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"


def test_predict_and_evaluate_without_torch(rgb_model, shapes_test, tmp_path):
    test_dir, labels = shapes_test
    sub = tmp_path / "submission.csv"
    r = run_without_torch(["predict", str(test_dir), "--model", str(rgb_model), "-o", str(sub)])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["id", "label"] and len(rows) == 1 + len(list(test_dir.glob("*.png")))

    out = tmp_path / "eval"
    r = run_without_torch(
        ["evaluate", str(test_dir), "--labels", str(labels), "--model", str(rgb_model), "-o", str(out)]
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "LEAKED []" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(rows) - 1


def test_train_without_torch_says_how_to_install(shapes_train, tmp_path):
    r = run_without_torch(["train", str(shapes_train), "--out", str(tmp_path / "run")])
    assert r.returncode == 2
    assert 'pip install "cvtool[train]"' in r.stderr
