"""The public Python API: its names, a torch-free lazy import, and Predictor = the CLI's numbers."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from helpers_predict import image_folder, linear_onnx
from PIL import Image
from typer.testing import CliRunner

import cvtool
from cvtool.cli import app

runner = CliRunner()
NAMES = ("a", "b", "c")


def test_public_names():
    # The exported members, and nothing else: a name added or removed here is an API change.
    assert sorted(cvtool.__all__) == ["ModelCard", "Prediction", "Predictor", "__version__", "evaluate"]
    for name in cvtool.__all__:
        assert getattr(cvtool, name) is not None
    with pytest.raises(AttributeError):
        cvtool.no_such_name  # noqa: B018


def test_import_is_lazy_and_torch_free():
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision'): sys.modules[m] = None\n"
        "import cvtool\n"
        "assert 'onnxruntime' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
        "from cvtool import Predictor, ModelCard, evaluate\n"
        "print(Predictor.__module__, evaluate.__module__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cvtool.infer.predictor", "cvtool.evaluation.run"]


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    model = linear_onnx(d / "m.onnx", NAMES, size=16, card={"resize": "shorter_crop"})
    images = image_folder(d / "test", [str(i) for i in range(1, 11)])
    return model, images


def _cli_probs(model, images, tmp_path) -> dict[str, list[float]]:
    out = tmp_path / "probs.csv"
    r = runner.invoke(app, ["predict", str(images), "-m", str(model), "-o", str(out), "--probs"])
    assert r.exit_code == 0, r.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["id"]: [float(row[n]) for n in NAMES] for row in rows}


def test_predictor_on_arrays_equals_the_cli_on_the_files(model_and_images, tmp_path):
    model, images = model_and_images
    cli = _cli_probs(model, images, tmp_path)
    files = sorted(images.glob("*.png"), key=lambda p: int(p.stem))
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    p = cvtool.Predictor(model, device="cpu")
    by_array = p.predict(arrays)
    by_path = p.predict(files)
    by_pil = p.predict([Image.open(f) for f in files])
    expected = np.array([cli[f.stem] for f in files])
    # The CLI writes 6 decimals; the API's own three routes agree exactly with each other.
    np.testing.assert_allclose(by_array.probs, expected, atol=1e-6)
    np.testing.assert_array_equal(by_array.probs, by_path.probs)
    np.testing.assert_array_equal(by_array.probs, by_pil.probs)
    assert by_array.labels == [NAMES[i] for i in expected.argmax(1)]
    assert by_array.class_names == NAMES and not by_array.failed


def test_predictor_takes_one_image_a_batch_array_and_keeps_failed_rows(model_and_images, tmp_path):
    model, images = model_and_images
    p = cvtool.Predictor(str(model), device="cpu", batch_size=4)
    files = sorted(images.glob("*.png"), key=lambda f: int(f.stem))
    resized = np.stack([np.asarray(Image.open(f).convert("RGB").resize((16, 16))) for f in files[:3]])
    batch = p.predict(resized)  # (N, H, W, C)
    one = p.predict(resized[1])  # (H, W, C)
    assert batch.probs.shape == (3, 3) and one.probs.shape == (1, 3)
    np.testing.assert_array_equal(one.probs[0], batch.probs[1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    mixed = p([files[0], broken, resized[0]])
    assert mixed.failed == {1: "not a recognised image"}
    assert mixed.labels[1] is None and np.isnan(mixed.probs[1]).all()
    assert list(mixed.indices[[0, 2]]) == [int(mixed.probs[0].argmax()), int(mixed.probs[2].argmax())]
    assert mixed.indices[1] == -1
    with pytest.raises(cvtool.errors.CvtoolError, match="uint8"):
        p.predict(resized.astype(np.float32))


def test_predictor_takes_images_of_different_sizes_in_an_object_array(model_and_images):
    # Ray Data hands a batch of differently sized images as an object array of (H, W, C) arrays.
    model, images = model_and_images
    files = sorted(images.glob("*.png"), key=lambda f: int(f.stem))[:3]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    assert len({a.shape for a in arrays}) > 1
    ragged = np.empty(len(arrays), dtype=object)
    ragged[:] = arrays
    p = cvtool.Predictor(model, device="cpu")
    np.testing.assert_array_equal(p.predict(ragged).probs, p.predict(arrays).probs)


def test_evaluate_takes_a_model_path(tmp_path):
    from conftest import CLASSES, make_flat_test

    model = linear_onnx(tmp_path / "m.onnx", CLASSES, size=32)
    data, labels = make_flat_test(tmp_path / "test", per_class=3)
    r = cvtool.evaluate(model, data, tmp_path / "eval", labels_csv=labels)
    assert r.n == 9 and 0.0 <= r.accuracy <= 1.0
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert sum(r.per_class[c].support for c in CLASSES) == 9
