"""cvtool bundle: an offline folder of wheels and models for Kaggle code competitions.

The install test needs PyPI (marker `network`: deselect it with -m "not network"); the others run
offline, pip's failures included (an empty --find-links folder, an index on a closed port).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers_predict import image_folder, linear_onnx
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from typer.testing import CliRunner

import cvtool
from cvtool.bundle import BundleError, BundleResult, bundle
from cvtool.bundle.readme import render_readme
from cvtool.bundle.wheels import (
    Target,
    cpu_wheel,
    download_wheels,
    runtime_requirements,
    source_root,
    wheel_metadata,
)
from cvtool.cli.app import app
from cvtool.infer.session import ModelError

runner = CliRunner()
LINUX = Target("3.11", "manylinux_2_28_x86_64")
NOT_RUNTIME = {"torch", "torchvision", "onnxscript", "pytest", "ruff", "mypy", "captum", "scikit-learn"}


def names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name for r in requirements}


def leftovers(folder: Path) -> list[str]:
    """Hidden partial/old bundle folders left beside the output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir())


@pytest.fixture
def pip_offline(monkeypatch):
    """pip sees no config file and no PIP_* settings: only the options a test passes."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def test_requirements_come_from_cvtools_metadata_for_the_target():
    requires = importlib.metadata.requires("cvtool")
    assert requires, "cvtool's metadata lists its requirements"
    gpu = runtime_requirements(LINUX)
    assert gpu == runtime_requirements(LINUX, requires=requires)
    base = {"numpy", "pillow", "typer", "rich", "matplotlib", "onnx"}
    assert names(gpu) == base | {"onnxruntime-gpu"}
    # The version ranges are the metadata's, not a second list's.
    ranges = {Requirement(r).name: str(Requirement(r).specifier) for r in requires if "extra ==" not in r}
    assert all(str(Requirement(r).specifier) == ranges[Requirement(r).name] for r in gpu)

    cpu = runtime_requirements(LINUX, cpu=True)
    assert names(cpu) == base | {"onnxruntime"}
    assert f"onnxruntime{ranges['onnxruntime-gpu']}" in cpu
    assert not (names(gpu) | names(cpu)) & NOT_RUNTIME
    assert BundleResult(Path("b"), LINUX, False, "0.1.0", gpu).ort_package == "onnxruntime-gpu"
    assert BundleResult(Path("b"), LINUX, True, "0.1.0", cpu).ort_package == "onnxruntime"

    # cvtool's own markers, evaluated for the target rather than this machine.
    assert "onnxruntime" in names(runtime_requirements(Target("3.11", "manylinux_2_28_aarch64")))
    assert "onnxruntime" in names(runtime_requirements(Target("3.12", "macosx_11_0_arm64")))
    assert "onnxruntime-gpu" in names(runtime_requirements(Target("3.11", "win_amd64")))


def test_markers_python_version_and_extras_are_evaluated_for_the_target():
    requires = [
        "a>=1; sys_platform == 'win32'",
        "b; python_version < '3.11'",
        "c; extra == 'train'",
        "onnxruntime-gpu[cuda,cudnn]>=1.21; platform_machine == 'AMD64'",
    ]
    windows = Target("3.10", "win_amd64")
    assert runtime_requirements(windows, requires=requires) == [
        "a>=1",
        "b",
        "onnxruntime-gpu[cuda,cudnn]>=1.21",
    ]
    assert runtime_requirements(windows, cpu=True, requires=requires) == ["a>=1", "b", "onnxruntime>=1.21"]
    assert runtime_requirements(LINUX, requires=requires) == []


def test_platform_tags_and_versions():
    tags = LINUX.pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_29_x86_64" not in tags
    assert {"manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert Target("3.11", "manylinux2014_x86_64").pip_platforms() == [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    ]
    assert Target("3.11", "win_amd64").pip_platforms() == ["win_amd64"]
    with pytest.raises(BundleError, match="unknown wheel platform tag 'amd64'"):
        Target("3.11", "amd64")
    with pytest.raises(BundleError, match="X.Y"):
        Target("311")


def test_a_non_empty_folder_is_refused(tmp_path):
    model = linear_onnx(tmp_path / "model.onnx", ["cat", "dog"])
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["bundle", str(model), "-o", str(out), "--cpu"])
    assert r.exit_code == 2
    assert "not empty" in r.output and "--force" in r.output and len(r.output.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine" and leftovers(tmp_path) == []
    # --force replaces the folder: not when a model to bundle lies inside it.
    inside = linear_onnx(out / "inner.onnx", ["cat", "dog"])
    with pytest.raises(BundleError, match="--force would replace"):
        bundle([inside], out, force=True)


def test_a_model_without_a_card_is_refused(tmp_path):
    model = linear_onnx(tmp_path / "plain.onnx", ["cat", "dog"])
    m = onnx.load(str(model))
    del m.metadata_props[:]
    onnx.save(m, str(model))
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["bundle", str(model), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "plain.onnx" in r.output and "no cvtool card" in r.output and "cvtool card set" in r.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_models_with_the_same_file_name_are_refused(tmp_path):
    a = linear_onnx(tmp_path / "a" / "model.onnx", ["cat", "dog"])
    b = linear_onnx(tmp_path / "b" / "model.onnx", ["cat", "dog"], seed=1)
    with pytest.raises(BundleError, match="same file name"):
        bundle([a, b], tmp_path / "out")
    with pytest.raises(BundleError, match="given twice"):
        bundle([a, a], tmp_path / "out")
    with pytest.raises(ModelError, match="model file not found"):
        bundle([tmp_path / "missing.onnx"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def readme(models, ort="onnxruntime"):
    return render_readme("my-ds", "0.1.0+cpu", "3.11", "manylinux_2_28_x86_64", ort, models, 29, 84_000_000)


def test_readme_names_the_wheels_and_the_models():
    text = readme([("model.onnx", ["cat", "dog"])])
    assert "!pip install --no-index --find-links /kaggle/input/my-ds/wheels cvtool onnxruntime\n" in text
    line = "!cvtool predict /kaggle/input/<competition>/test -m /kaggle/input/my-ds/models/model.onnx"
    assert f"{line} -o submission.csv" in text
    assert "from cvtool import Predictor" in text and "| `models/model.onnx` | 2: cat, dog |" in text

    gpu = readme([("model.onnx", ["cat", "dog"])], ort="onnxruntime-gpu")
    assert "/kaggle/input/my-ds/wheels cvtool\n" in gpu and "cuDNN" in gpu and "cuDNN" not in text

    two = readme([("a.onnx", ["cat", "dog"]), ("b.onnx", ["cat", "dog"])])
    assert (
        "-m /kaggle/input/my-ds/models/a.onnx -m /kaggle/input/my-ds/models/b.onnx -o submission.csv" in two
    )
    differ = readme([("a.onnx", ["cat", "dog"]), ("b.onnx", ["x", "y", "z"])])
    assert not re.search(r"-m \S+ -m ", differ) and differ.count("!cvtool predict") == 2


def test_readmes_python_cell_writes_the_cli_submission(tmp_path, monkeypatch):
    model = linear_onnx(tmp_path / "model.onnx", ["cat", "dog", "fox"], seed=3)
    test = image_folder(tmp_path / "test", [str(i) for i in range(1, 12)])
    text = readme([("model.onnx", ["cat", "dog", "fox"])])
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("/kaggle/input/my-ds/models/model.onnx", str(model))
    code = code.replace("/kaggle/input/<competition>/test", str(test))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    r = runner.invoke(app, ["predict", str(test), "-m", str(model), "-o", str(tmp_path / "cli.csv")])
    assert r.exit_code == 0, r.output
    api = list(csv.reader(open(tmp_path / "submission.csv", newline="")))
    cli = list(csv.reader(open(tmp_path / "cli.csv", newline="")))
    assert api[0] == cli[0] and sorted(api[1:]) == sorted(cli[1:]) and len(api) == 12


def fake_wheel(path: Path) -> Path:
    info = "cvtool-0.1.0.dist-info"
    files = {
        "cvtool/__init__.py": b"__version__ = '0.1.0'\n",
        f"{info}/METADATA": (
            b"Metadata-Version: 2.4\nName: cvtool\nVersion: 0.1.0\nRequires-Dist: numpy>=1.24\n"
            b"Requires-Dist: onnxruntime-gpu>=1.20; sys_platform == 'linux'\n"
            b"Requires-Dist: onnxruntime>=1.20; sys_platform != 'linux'\n\n"
            b"# cvtool\n\nRequires-Dist: onnxruntime-gpu stays in the description\n"
        ),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": b"stale\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_cpu_wheel_requires_onnxruntime_and_has_a_valid_record(tmp_path):
    (tmp_path / "out").mkdir()
    wheel = cpu_wheel(fake_wheel(tmp_path / "cvtool-0.1.0-py3-none-any.whl"), tmp_path / "out")
    assert wheel.name == "cvtool-0.1.0+cpu-py3-none-any.whl"
    (tmp_path / "again").mkdir()  # a cvtool installed from a --cpu bundle is bundled as it is
    assert cpu_wheel(wheel, tmp_path / "again").read_bytes() == wheel.read_bytes()
    version, requires = wheel_metadata(wheel)
    assert version == "0.1.0+cpu"
    assert requires == [
        "numpy>=1.24",
        'onnxruntime>=1.20; sys_platform == "linux"',
        "onnxruntime>=1.20; sys_platform != 'linux'",
    ]
    with zipfile.ZipFile(wheel) as z:
        assert all(n.startswith(("cvtool/", "cvtool-0.1.0+cpu.dist-info/")) for n in z.namelist())
        meta = z.read("cvtool-0.1.0+cpu.dist-info/METADATA").decode()
        assert meta.endswith("Requires-Dist: onnxruntime-gpu stays in the description\n")
        rows = list(csv.reader(z.read("cvtool-0.1.0+cpu.dist-info/RECORD").decode().splitlines()))
        assert sorted(r[0] for r in rows) == sorted(z.namelist())
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = z.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)


def test_the_source_folder_is_found_from_the_package(tmp_path):
    assert source_root(Path(cvtool.__file__).parent) == Path(__file__).resolve().parents[1]
    installed = tmp_path / "site-packages" / "cvtool"
    installed.mkdir(parents=True)
    assert source_root(installed) is None
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert source_root(installed) is None


def test_pip_failures_are_one_line_naming_the_package(tmp_path, pip_offline):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = Target.running(LINUX.platform)
    with pytest.raises(BundleError) as e:
        download_wheels(["numpy>=1.24"], target, tmp_path / "w", ["--no-index", "--find-links", str(empty)])
    message = str(e.value)
    assert "no wheel of numpy>=1.24" in message and "\n" not in message
    # An index nobody answers on: pip retries once, then cvtool says the index is unreachable.
    with pytest.raises(BundleError) as e:
        download_wheels(
            ["numpy>=1.24"],
            target,
            tmp_path / "w",
            ["--index-url", "https://127.0.0.1:9/simple", "--retries", "1"],
        )
    message = str(e.value)
    assert "could not reach the package index https://127.0.0.1:9/simple" in message
    assert "numpy>=1.24" in message and "\n" not in message


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def _predict(cvtool_cmd: list[str], test: Path, model: Path, out: Path, *extra: str) -> Path:
    args = [*cvtool_cmd, "predict", str(test), "-m", str(model), "-o", str(out), *extra]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _probs(path: Path) -> np.ndarray:
    rows = list(csv.reader(open(path, newline="")))
    return np.array([[float(v) for v in row[1:]] for row in rows[1:]])


@pytest.mark.network
def test_bundle_installs_offline_in_a_fresh_venv_and_predicts_the_same(tmp_path):
    classes = ["cat", "dog", "fox", "owl", "yak"]
    model = linear_onnx(tmp_path / "src" / "model.onnx", classes, seed=5)
    test = image_folder(tmp_path / "test", [str(i) for i in range(1, 17)])
    out = tmp_path / "kaggle-bundle"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier bundle")
    # Wheels that install here: this interpreter's manylinux tag (Kaggle's default is in DEFAULT_PLATFORM).
    tags = [t.platform for t in sys_tags()]
    platform = next((p for p in tags if p.startswith(("manylinux_", "musllinux_"))), tags[0])
    try:
        r = bundle([model], out, platform=platform, cpu=True, force=True)
    except BundleError as e:
        pytest.fail(f"cvtool bundle failed (this test needs PyPI; deselect it with -m 'not network'): {e}")

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "bundle.json", "models", "wheels"]
    assert leftovers(tmp_path) == []
    manifest = json.loads((out / "bundle.json").read_text())
    assert (
        manifest["cpu"] is True
        and manifest["platform"] == platform
        and manifest["onnxruntime"] == "onnxruntime"
    )
    assert manifest["cvtool_version"] == f"{cvtool.__version__}+cpu" == r.cvtool_version
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert [w["file"] for w in manifest["wheels"]] == [f"wheels/{w}" for w in wheels]
    for w in manifest["wheels"]:
        assert hashlib.sha256((out / w["file"]).read_bytes()).hexdigest() == w["sha256"]
    projects = {w.split("-")[0].lower() for w in wheels}
    assert {"cvtool", "onnxruntime", "numpy", "pillow", "onnx", "typer", "rich", "matplotlib"} <= projects
    assert not projects & {"torch", "torchvision", "onnxruntime_gpu", "onnxscript", "pytest"}
    assert manifest["models"] == [
        {
            "file": "models/model.onnx",
            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "size": model.stat().st_size,
            "classes": classes,
        }
    ]
    text = (out / "README.md").read_text()
    assert "--find-links /kaggle/input/kaggle-bundle/wheels cvtool onnxruntime" in text
    assert "-m /kaggle/input/kaggle-bundle/models/model.onnx -o submission.csv" in text

    # A fresh environment (no system site packages, no pip config, no index) installs it offline.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    install = [
        str(_venv_python(venv)),
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(out / "wheels"),
    ]
    p = subprocess.run(
        [*install, "cvtool", "onnxruntime"], capture_output=True, text=True, env=env, timeout=900
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    no_torch = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    assert subprocess.run([str(_venv_python(venv)), "-c", no_torch], timeout=60).returncode == 0

    fresh_cli = [str(_venv_python(venv)), "-m", "cvtool"]
    dev_cli = [sys.executable, "-m", "cvtool"]
    bundled = out / "models" / "model.onnx"
    fresh = _predict(fresh_cli, test, bundled, tmp_path / "fresh.csv")
    dev = _predict(dev_cli, test, model, tmp_path / "dev.csv")
    assert fresh.read_text() == dev.read_text()
    assert len({row[1] for row in list(csv.reader(open(dev)))[1:]}) > 1  # the labels are not all the same
    fresh_p = _predict(fresh_cli, test, bundled, tmp_path / "fresh_probs.csv", "--probs")
    dev_p = _predict(dev_cli, test, model, tmp_path / "dev_probs.csv", "--probs")
    np.testing.assert_allclose(_probs(fresh_p), _probs(dev_p), atol=1e-6)
