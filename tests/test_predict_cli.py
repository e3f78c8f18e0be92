"""`cvtool predict` formats, sample files, TTA, ensembles, shards + `cvtool merge`, devices."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_predict import image_folder, linear_onnx, read_csv
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.images import load_and_preprocess
from cvtool.infer.session import cuda_status, open_model

runner = CliRunner()
NAMES = ("cat", "dog", "bird")
IDS = [str(i) for i in (1, 2, 3, 5, 8, 10, 13, 21, 34, 55, 89, 100)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = linear_onnx(root / "m.onnx", NAMES, seed=3)
    test = image_folder(root / "test", IDS, seed=1)
    return model, test


def _probs(model: Path, test: Path, ids=IDS) -> np.ndarray:
    """Reference: the model on each file, in id order."""
    m = open_model(model, device="cpu")
    x = np.stack([load_and_preprocess(test / f"{i}.png", m.card) for i in ids])
    return m.run(x)


def _predict(*args: str) -> object:
    return runner.invoke(app, ["predict", *map(str, args)])


def test_default_rows_in_numeric_order_with_labels(setup, tmp_path):
    model, test = setup
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out)
    assert r.exit_code == 0, r.output
    rows = read_csv(out)
    assert rows[0] == ["id", "label"]
    assert [row[0] for row in rows[1:]] == IDS  # 2 before 10 before 100
    assert [row[1] for row in rows[1:]] == [NAMES[k] for k in _probs(model, test).argmax(1)]
    assert re.search(r"wrote .*s\.csv: 12 rows, \d+ images/s on CPUExecutionProvider", r.output)


def test_index_topk_probs_and_columns(setup, tmp_path):
    model, test = setup
    p = _probs(model, test)
    r = _predict(
        test, "-m", model, "-o", tmp_path / "i.csv", "--label", "index", "--columns", "ImageId,Label"
    )
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "i.csv")
    assert rows[0] == ["ImageId", "Label"] and [int(x[1]) for x in rows[1:]] == p.argmax(1).tolist()

    assert _predict(test, "-m", model, "-o", tmp_path / "t.csv", "--topk", "2").exit_code == 0
    rows = read_csv(tmp_path / "t.csv")
    assert rows[0] == ["id", "label_1", "label_2"]
    top2 = np.argsort(-p, 1)[:, :2]
    assert [x[1:] for x in rows[1:]] == [[NAMES[a], NAMES[b]] for a, b in top2]

    assert _predict(test, "-m", model, "-o", tmp_path / "p.csv", "--probs").exit_code == 0
    rows = read_csv(tmp_path / "p.csv")
    assert rows[0] == ["id", *NAMES]
    np.testing.assert_allclose(np.array([[float(v) for v in x[1:]] for x in rows[1:]]), p, rtol=1e-5)

    r = _predict(test, "-m", model, "-o", tmp_path / "x.csv", "--columns", "a,b,c")
    assert r.exit_code == 2 and "--columns names 3 columns but the output has 2" in r.output
    r = _predict(test, "-m", model, "-o", tmp_path / "x.csv", "--probs", "--topk", "2")
    assert r.exit_code == 2 and "choose one" in r.output
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("suffix,flag", [(".json", None), (".jsonl", None), (".out", "jsonl")])
def test_json_outputs(setup, tmp_path, suffix, flag):
    model, test = setup
    out = tmp_path / f"s{suffix}"
    args = [test, "-m", model, "-o", out, "--probs"] + (["--output-format", flag] if flag else [])
    assert _predict(*args).exit_code == 0
    text = out.read_text()
    objs = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    assert [o["id"] for o in objs] == IDS
    np.testing.assert_allclose([[o[n] for n in NAMES] for o in objs], _probs(model, test), rtol=1e-5)


def test_binary_prob_with_clip(tmp_path):
    model = linear_onnx(tmp_path / "cd.onnx", ("cat", "dog"), seed=7)
    test = image_folder(tmp_path / "t", ["1", "2", "3"], seed=2)
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out, "--label", "prob", "--clip", "0.3")
    assert r.exit_code == 0, r.output
    p = _probs(model, test, ["1", "2", "3"])[:, 1]
    got = [float(x[1]) for x in read_csv(out)[1:]]
    np.testing.assert_allclose(got, np.clip(p, 0.3, 0.7), rtol=1e-5)
    # Multi-class models need the class named.
    setup_model = linear_onnx(tmp_path / "abc.onnx", NAMES)
    r = _predict(test, "-m", setup_model, "-o", out, "--label", "prob")
    assert r.exit_code == 2 and "binary" in r.output


def test_sample_submission_order_header_and_mismatches(setup, tmp_path):
    model, test = setup
    sample = tmp_path / "sample_submission.csv"
    order = IDS[::-1]
    sample.write_text("ImageId,Category\n" + "".join(f"{i},cat\n" for i in order))
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out, "--sample-submission", sample)
    assert r.exit_code == 0, r.output
    rows = read_csv(out)
    assert rows[0] == ["ImageId", "Category"] and [x[0] for x in rows[1:]] == order
    want = dict(zip(IDS, (NAMES[k] for k in _probs(model, test).argmax(1)), strict=True))
    assert all(x[1] == want[x[0]] for x in rows[1:])

    sample.write_text("id,label\n" + "".join(f"{i},cat\n" for i in IDS[1:] + ["999"]))
    out2 = tmp_path / "s2.csv"
    r = _predict(test, "-m", model, "-o", out2, "--sample-submission", sample)
    assert r.exit_code == 2
    assert "1 id(s) of sample_submission.csv have no image, e.g. ['999']" in r.output
    assert "1 image(s) have no row in sample_submission.csv, e.g. ['1']" in r.output
    assert not out2.exists()


def test_files_list_and_nested_folders(tmp_path):
    model = linear_onnx(tmp_path / "m.onnx", NAMES)
    test = image_folder(tmp_path / "t", ["a/1", "a/2", "b/1"], seed=3)
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out, "--recursive")
    assert r.exit_code == 2 and "duplicate id" in r.output and "--id-from" in r.output
    r = _predict(test, "-m", model, "-o", out, "--recursive", "--id-from", "relpath")
    assert r.exit_code == 0, r.output
    assert [x[0] for x in read_csv(out)[1:]] == ["a/1.png", "a/2.png", "b/1.png"]
    lst = tmp_path / "list.txt"
    lst.write_text("b/1.png\na/2.png\n")
    r = _predict(test, "-m", model, "-o", out, "--files", lst, "--id-from", "relpath")
    assert r.exit_code == 0, r.output
    assert [x[0] for x in read_csv(out)[1:]] == ["a/2.png", "b/1.png"]


def test_tta_and_ensemble_from_the_command_line(setup, tmp_path):
    model, test = setup
    single, double = tmp_path / "1.csv", tmp_path / "2.csv"
    assert _predict(test, "-m", model, "-o", single, "--probs").exit_code == 0
    r = _predict(test, "-m", model, "-m", model, "--model-weights", "1,2", "-o", double, "--probs")
    assert r.exit_code == 0, r.output
    assert double.read_text() == single.read_text()
    r = _predict(test, "-m", model, "-m", model, "--model-weights", "1", "-o", double)
    assert r.exit_code == 2 and "1 weight(s) given for 2 model(s)" in r.output

    flip = tmp_path / "f.csv"
    assert _predict(test, "-m", model, "-o", flip, "--probs", "--tta", "flip").exit_code == 0
    m = open_model(model, device="cpu")
    x = np.stack([load_and_preprocess(test / f"{i}.png", m.card) for i in IDS])
    want = (m.run(x) + m.run(x[:, :, :, ::-1].copy())) / 2
    got = np.array([[float(v) for v in row[1:]] for row in read_csv(flip)[1:]])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert _predict(test, "-m", model, "-o", flip, "--tta", "rotate").exit_code == 2


def test_shards_merge_to_the_unsharded_result(setup, tmp_path):
    model, test = setup
    full = tmp_path / "full.csv"
    assert _predict(test, "-m", model, "-o", full, "--probs").exit_code == 0
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part{i}.csv"
        r = _predict(test, "-m", model, "-o", part, "--probs", "--shard", f"{i}/3")
        assert r.exit_code == 0, r.output
        assert f"shard {i}/3:" in r.output
        parts.append(part)
    assert sum(len(read_csv(p)) - 1 for p in parts) == len(IDS)
    merged = tmp_path / "submission.csv"
    r = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged)])
    assert r.exit_code == 0, r.output
    assert merged.read_text() == full.read_text()
    assert "all 3 shards present, 12 ids as listed" in r.output

    # A missing shard is a gap; the same part twice is an overlap.
    r = runner.invoke(app, ["merge", str(parts[0]), str(parts[2]), "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "gap: shard(s) 2/3 missing" in r.output
    copy = tmp_path / "copy.csv"
    copy.write_text(parts[0].read_text())
    r = runner.invoke(app, ["merge", *map(str, parts), str(copy), "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "overlap:" in r.output
    assert not (tmp_path / "x.csv").exists()

    # With the sample file: its order, and no sidecar needed.
    sample = tmp_path / "sample.csv"
    sample.write_text("id," + ",".join(NAMES) + "\n" + "".join(f"{i},0,0,0\n" for i in IDS[::-1]))
    for p in parts:
        p.with_name(p.stem + ".shard.json").unlink()
    r = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged)])
    assert r.exit_code == 2 and "cannot check for gaps" in r.output
    r = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged), "--sample-submission", str(sample)])
    assert r.exit_code == 0, r.output
    assert [x[0] for x in read_csv(merged)[1:]] == IDS[::-1]


def test_merge_reports_rows_left_out_by_skip(setup, tmp_path):
    model, _ = setup
    test = image_folder(tmp_path / "t", [str(i) for i in range(1, 9)], seed=4)
    (test / "9.png").write_bytes(b"")
    parts = []
    for i in (1, 2):
        part = tmp_path / f"part{i}.csv"
        r = _predict(test, "-m", model, "-o", part, "--shard", f"{i}/2", "--on-error", "skip")
        assert r.exit_code in (0, 1)
        parts.append(part)
    failures = [p.with_name(p.stem + ".failures.csv") for p in parts]
    r = runner.invoke(
        app, ["merge", *map(str, parts + [f for f in failures if f.exists()]), "-o", str(tmp_path / "m.csv")]
    )
    assert r.exit_code == 2
    assert "gap: 8 ids merged but the shards listed 9" in r.output and "--on-error skip" in r.output


@pytest.mark.skipif(cuda_status()[0], reason="CUDA is usable on this machine")
@pytest.mark.parametrize("device,what", [("cuda", "CUDA"), ("tensorrt", "TensorRT")])
def test_strict_devices_exit_2_with_the_reason(setup, tmp_path, device, what):
    model, test = setup
    r = _predict(test, "-m", model, "-o", tmp_path / "s.csv", "--device", device)
    assert r.exit_code == 2
    assert f"--device {device}: {what} cannot be used: " in r.output
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.skipif(cuda_status()[0], reason="CUDA is usable on this machine")
def test_auto_uses_the_cpu_without_onnxruntime_error_lines(setup, tmp_path):
    """In a fresh process, so that anything ONNX Runtime prints (C++ logging included) is seen."""
    model, test = setup
    out = tmp_path / "s.csv"
    r = subprocess.run(
        [sys.executable, "-m", "cvtool", "predict", str(test), "-m", str(model), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "on CPUExecutionProvider" in r.stdout
    noise = re.compile(r"onnxruntime|Failed to|EP Error|error|warning|libcu", re.IGNORECASE)
    # The "wrote <path>: …" line is left out: the temporary path may contain any word.
    lines = [line for line in (r.stdout + r.stderr).splitlines() if not line.startswith("wrote ")]
    assert not [line for line in lines if noise.search(line)]


def test_shards_with_a_sample_file(setup, tmp_path):
    """Each shard checks its share of the sample's ids; the merge restores the sample's order."""
    model, test = setup
    sample = tmp_path / "sample.csv"
    sample.write_text("Id,Expected\n" + "".join(f"{i},x\n" for i in IDS[::-1]))
    full = tmp_path / "full.csv"
    assert _predict(test, "-m", model, "-o", full, "--sample-submission", sample).exit_code == 0
    parts = []
    for i in (1, 2):
        part = tmp_path / f"part{i}.csv"
        r = _predict(test, "-m", model, "-o", part, "--sample-submission", sample, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
        parts.append(part)
    merged = tmp_path / "merged.csv"
    r = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged), "--sample-submission", str(sample)])
    assert r.exit_code == 0, r.output
    assert merged.read_text() == full.read_text()
    r = runner.invoke(app, ["merge", str(parts[0]), "-o", str(merged), "--sample-submission", str(sample)])
    assert r.exit_code == 2 and "have no image" in r.output  # the other shard's ids are missing


def test_a_clean_rerun_removes_the_old_failure_list(setup, tmp_path):
    model, _ = setup
    test = image_folder(tmp_path / "t", ["1", "2"], seed=5)
    (test / "3.png").write_bytes(b"")
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out)
    assert (
        r.exit_code == 1 and "1 image(s) could not be read (filled with the most-predicted class)" in r.output
    )
    assert read_csv(tmp_path / "s.failures.csv")[1][1] == "empty file"
    assert [x[0] for x in read_csv(out)[1:]] == ["1", "2", "3"]
    (test / "3.png").unlink()
    assert _predict(test, "-m", model, "-o", out).exit_code == 0
    assert not (tmp_path / "s.failures.csv").exists()


def _predict_process(*args: object, umask: int | None = None) -> subprocess.CompletedProcess:
    """`cvtool predict` in a fresh process, killed after two minutes so a hang fails the test."""
    import os

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "cvtool", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=set_umask,
    )


def test_a_fifo_named_like_an_image_is_skipped_not_read(setup, tmp_path):
    import os

    model, _ = setup
    test = image_folder(tmp_path / "t", ["1", "2"], seed=6)
    os.mkfifo(test / "x.png")  # opening it for reading would block for ever
    out = tmp_path / "s.csv"
    r = _predict_process(test, "-m", model, "-o", out)
    assert r.returncode == 0, r.stderr
    assert [x[0] for x in read_csv(out)[1:]] == ["1", "2"]
    assert "skipped 1 file(s): not a regular file" in r.stdout


def test_recursive_listing_survives_a_symlink_loop(setup, tmp_path):
    import os

    model, _ = setup
    test = image_folder(tmp_path / "t", ["1", "sub/2"], seed=7)
    os.symlink(".", test / "loop")
    out = tmp_path / "s.csv"
    r = _predict(test, "-m", model, "-o", out, "--recursive", "--id-from", "relpath")
    assert r.exit_code == 0, r.output
    assert [x[0] for x in read_csv(out)[1:]] == ["1.png", "sub/2.png"]  # each real image once
    assert "skipped 1 file(s): link to a folder already listed" in r.output


def test_submission_gets_the_mode_a_plain_open_gives(setup, tmp_path):
    import stat

    model, test = setup
    out = tmp_path / "submission.csv"
    r = _predict_process(test, "-m", model, "-o", out, umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
