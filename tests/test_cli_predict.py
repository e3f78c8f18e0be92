"""`cvtool predict`: one row per image, numeric id order, channel conversion, failures kept."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from conftest import CLASSES, make_flat_test
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.images import load_and_preprocess
from cvtool.infer.session import cuda_status, open_model

runner = CliRunner()


def read_rows(path):
    return list(csv.reader(path.open(newline="")))


def test_submission_has_one_row_per_image_in_numeric_order(rgb_model, shapes_test, tmp_path):
    test_dir, _ = shapes_test
    out = tmp_path / "sub.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "--model", str(rgb_model), "-o", str(out), "-b", "5"])
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    files = list(test_dir.glob("*.png"))
    assert rows[0] == ["id", "label"]
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(int(f.stem) for f in files)  # numeric, not lexicographic: 2 before 10
    assert all(row[1] in CLASSES for row in rows[1:])
    assert "CPUExecutionProvider" in r.output and "images/s" in r.output
    # Labels are the argmax of the model on the same preprocessing.
    m = open_model(rgb_model, device="cpu")
    by_id = {f.stem: f for f in files}
    x = np.stack([load_and_preprocess(by_id[str(i)], m.card) for i in ids])
    expected = [CLASSES[k] for k in m.run(x).argmax(1)]
    assert [row[1] for row in rows[1:]] == expected


@pytest.mark.parametrize(
    "model_fixture,file_mode",
    [("gray_model", "RGB"), ("rgb_model", "L")],
    ids=["1ch-model-rgb-files", "3ch-model-gray-files"],
)
def test_channel_conversion(request, tmp_path, model_fixture, file_mode):
    model = request.getfixturevalue(model_fixture)
    test_dir, _ = make_flat_test(tmp_path / "t", per_class=3, mode=file_mode)
    out = tmp_path / "sub.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "--model", str(model), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(read_rows(out)) == 1 + 9


def test_bad_image_is_listed_filled_and_exits_1(rgb_model, tmp_path):
    test_dir, _ = make_flat_test(tmp_path / "t", per_class=2)
    (test_dir / "100.png").write_bytes(b"")  # zero bytes
    (test_dir / "101.jpg").write_text("not an image")
    (test_dir / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "sub.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "--model", str(rgb_model), "-o", str(out)])
    assert r.exit_code == 1
    rows = read_rows(out)
    assert [row[0] for row in rows[1:]][-2:] == ["100", "101"]
    assert len(rows) == 1 + 6 + 2
    failures = read_rows(tmp_path / "sub.failures.csv")
    assert {row[0].rsplit("/", 1)[-1] for row in failures[1:]} == {"100.png", "101.jpg"}
    assert "empty file" in r.output and "not a recognised image" in r.output
    assert "skipped 1 file(s): hidden file" in r.output

    out2 = tmp_path / "sub_skip.csv"
    r = runner.invoke(
        app, ["predict", str(test_dir), "--model", str(rgb_model), "-o", str(out2), "--on-error", "skip"]
    )
    assert r.exit_code == 1 and len(read_rows(out2)) == 1 + 6

    out3 = tmp_path / "sub_fail.csv"
    r = runner.invoke(
        app, ["predict", str(test_dir), "--model", str(rgb_model), "-o", str(out3), "--on-error", "fail"]
    )
    assert r.exit_code == 1 and not out3.exists()


def test_model_without_card_needs_flags(rgb_model, shapes_test, tmp_path):
    """A model whose card was stripped works when the user supplies the class names."""
    import onnx

    proto = onnx.load(str(rgb_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    test_dir, _ = shapes_test
    out = tmp_path / "sub.csv"
    r = runner.invoke(
        app, ["predict", str(test_dir), "--model", str(bare), "-o", str(out), "--classes", "a,b"]
    )
    assert r.exit_code == 2 and "2 classes but the model outputs 3" in r.output
    r = runner.invoke(
        app,
        ["predict", str(test_dir), "--model", str(bare), "-o", str(out), "--classes", "a,b,c",
         "--mean", "0.2,0.2,0.2", "--std", "0.3,0.3,0.3", "-v"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "defaults + CLI overrides" in r.output
    labels = {row[1] for row in read_rows(out)[1:]}
    assert labels <= {"a", "b", "c"}


def test_unusable_model_file_is_a_clear_error(tmp_path, shapes_test):
    bad = tmp_path / "model.onnx"
    bad.write_text("hello")
    r = runner.invoke(app, ["predict", str(shapes_test[0]), "--model", str(bad)])
    assert r.exit_code == 2
    assert "model.onnx: not a loadable ONNX model" in r.output


@pytest.mark.skipif(cuda_status()[0], reason="CUDA is usable on this machine")
def test_device_cuda_without_cuda_exits_2(rgb_model, shapes_test):
    r = runner.invoke(app, ["predict", str(shapes_test[0]), "--model", str(rgb_model), "--device", "cuda"])
    assert r.exit_code == 2
    assert "CUDA cannot be used" in r.output


def test_verbose_prints_where_the_time_went(rgb_model, shapes_test, tmp_path):
    test_dir, _ = shapes_test
    n = len(list(test_dir.iterdir()))
    cmd = ["predict", str(test_dir), "--model", str(rgb_model), "-o", str(tmp_path / "s.csv")]
    r = runner.invoke(app, [*cmd, "-v"])
    assert r.exit_code == 0, r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("time ")]
    stages = ("listing", "decode + preprocess", "s CPU", "waiting for decoded batches", "model", "writing")
    for stage in stages:
        assert stage in line
    m = re.match(r"time (\d+\.\d+) s \((\d+) images/s\)", line)
    assert m and float(m[1]) > 0 and int(m[2]) > 0
    assert f"wrote {tmp_path / 's.csv'}: {n} rows" in r.output
    r = runner.invoke(app, cmd)
    assert not [x for x in r.output.splitlines() if x.startswith("time ")]
