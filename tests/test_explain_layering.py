"""Layering of the explain tools: graph reading in onnxtools, plotting in evaluate, a light CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cvtool

PACKAGE = Path(cvtool.__file__).parent
GRAPH_MODULES = [PACKAGE / "onnxtools" / "weights.py", PACKAGE / "onnxtools" / "layers.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_graph_readers_live_in_onnxtools_and_import_no_higher_layer():
    for path in GRAPH_MODULES:
        higher = {
            n for n in _imports(path) if n.startswith(("cvtool.evaluation", "cvtool.infer", "cvtool.cli"))
        }
        assert not higher, f"{path.name} imports {sorted(higher)}"


def test_evaluate_reads_no_onnx_graph_itself():
    # Graph reading and editing go through cvtool.onnxtools (one loader: load_onnx).
    paths = sorted((PACKAGE / "evaluation").glob("*.py"))
    assert len(paths) > 5
    for path in paths:
        onnx = {n for n in _imports(path) if n == "onnx" or n.startswith("onnx.")}
        assert not onnx, f"{path.name} imports {sorted(onnx)}"
        assert "def labeled_files" not in path.read_text(), f"{path.name}: use cvtool.data.labeled_files"


def _loaded(imports: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys, {imports}; print(sorted(m for m in {modules!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip())


def test_the_cli_does_not_import_matplotlib_or_onnx_at_startup():
    # Every command starts by importing every command module, their Literal choices included.
    assert _loaded("cvtool.cli.app", ("matplotlib", "onnx")) == []
    assert _loaded("cvtool.evaluation.occlusion, cvtool.evaluation.explain", ("matplotlib", "onnx")) == []


def test_predict_of_one_image_imports_no_onnx_matplotlib_or_torch(rgb_model, shapes_test, tmp_path):
    # The whole command, as a user runs it: what `python -X importtime` would list.
    code = (
        "import sys; from cvtool.cli import main; sys.argv = ['cvtool', 'predict', sys.argv[1], "
        "'--model', sys.argv[2], '-o', sys.argv[3]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('onnx', 'matplotlib', 'torch', 'openvino') if m in sys.modules))"
    )
    one = tmp_path / "one"
    one.mkdir()
    first = sorted(shapes_test[0].iterdir())[0]
    (one / first.name).write_bytes(first.read_bytes())
    r = subprocess.run(
        [sys.executable, "-c", code, str(one), str(rgb_model), str(tmp_path / "s.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "s.csv").read_text().count("\n") == 2
