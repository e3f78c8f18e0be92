"""Submission formats: row values against numpy references, CSV/JSON/JSONL files, sample alignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_predict import read_csv

from cvtool.infer.formats import Collector, FormatError, OutputSpec, SampleSubmission, format_for, write_rows

NAMES = ("cat", "dog", "bird", "fish")


def _probs(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((n, k)) * 2
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _collect(spec: OutputSpec, probs: np.ndarray, names=NAMES) -> Collector:
    c = Collector(len(probs), names, spec)
    # Two batches, the second before the first: rows land by position, not arrival.
    half = len(probs) // 2
    c.add(np.arange(half, len(probs)), probs[half:])
    c.add(np.arange(half), probs[:half])
    return c


def test_label_name_and_index_are_the_argmax():
    p = _probs(9)
    names = _collect(OutputSpec(), p)
    index = _collect(OutputSpec(label="index"), p)
    for i in range(len(p)):
        assert names.row_values(i) == [NAMES[int(p[i].argmax())]]
        assert index.row_values(i) == [int(p[i].argmax())]


def test_topk_is_argsort_descending():
    p = _probs(7)
    c = _collect(OutputSpec(topk=3), p)
    ref = np.argsort(-p, axis=1)[:, :3]
    assert [c.row_values(i) for i in range(7)] == [[NAMES[j] for j in row] for row in ref]
    assert OutputSpec(topk=3).columns(NAMES) == ["id", "label_1", "label_2", "label_3"]


def test_probs_columns_and_clip():
    p = _probs(5)
    p[0] = [0.999999, 0.000001, 0.0, 0.0]
    c = _collect(OutputSpec(probs=True, clip=0.01), p)
    assert OutputSpec(probs=True).columns(NAMES) == ["id", *NAMES]
    for i in range(5):
        want = np.clip(p[i], 0.01, 0.99)
        np.testing.assert_allclose(c.row_values(i), want, rtol=1e-5)
    assert c.row_values(0) == [0.99, 0.01, 0.01, 0.01]


def test_binary_prob_is_the_positive_class():
    p = _probs(6, k=2)
    c = _collect(OutputSpec(label="prob", clip=0.05), p, names=("cat", "dog"))
    got = [c.row_values(i)[0] for i in range(6)]
    np.testing.assert_allclose(got, np.clip(p[:, 1], 0.05, 0.95), rtol=1e-5)
    c = _collect(OutputSpec(label="prob", positive="cat"), p, names=("cat", "dog"))
    np.testing.assert_allclose([c.row_values(i)[0] for i in range(6)], p[:, 0], rtol=1e-5)


@pytest.mark.parametrize(
    "spec,match",
    [
        (OutputSpec(label="prob"), "binary"),
        (OutputSpec(probs=True, topk=2), "choose one"),
        (OutputSpec(topk=5), "between 1 and"),
        (OutputSpec(clip=0.1), "--clip applies"),
        (OutputSpec(probs=True, clip=0.6), r"\[0, 0.5\)"),
        (OutputSpec(label="prob", positive="cow"), "not a class"),
        (OutputSpec(label="guess"), "--label must be"),
    ],
)
def test_contradictory_options_are_refused(spec, match):
    with pytest.raises(FormatError, match=match):
        spec.check(NAMES)


def test_fill_uses_the_most_predicted_classes_and_mean_probs():
    p = np.array([[0.1, 0.6, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]], np.float32)
    c = Collector(5, NAMES, OutputSpec(topk=2))
    c.add([0, 2, 3], p)
    c.fill([1, 4])
    # dog came first twice, cat once; bird and fish never: ties broken by mean probability.
    assert c.row_values(1) == c.row_values(4) == ["dog", "cat"]
    cp = Collector(4, NAMES, OutputSpec(probs=True))
    cp.add([0, 1, 2], p)
    cp.fill([3])
    np.testing.assert_allclose(cp.row_values(3), p.mean(0), rtol=1e-5)
    nothing = Collector(2, NAMES, OutputSpec())
    nothing.fill([0, 1])
    assert nothing.row_values(0) == ["cat"]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_files_round_trip(tmp_path: Path, fmt: str):
    p = _probs(4)
    ids = ["10", "2", "33", "4"]
    c = _collect(OutputSpec(probs=True), p)
    out = tmp_path / f"sub.{fmt}"
    n = write_rows(out, ["id", *NAMES], ids, c, rows=[1, 3, 0, 2], fmt=fmt)
    assert n == 4
    if fmt == "csv":
        rows = read_csv(out)
        assert rows[0] == ["id", *NAMES]
        got_ids = [r[0] for r in rows[1:]]
        values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    else:
        text = out.read_text(encoding="utf-8")
        objs = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
        assert all(list(o) == ["id", *NAMES] for o in objs)
        got_ids = [o["id"] for o in objs]
        values = np.array([[o[k] for k in NAMES] for o in objs])
    assert got_ids == ["2", "4", "10", "33"]
    np.testing.assert_allclose(values, p[[1, 3, 0, 2]], rtol=1e-5)
    assert [q.name for q in tmp_path.iterdir()] == [out.name]  # atomic: no temporary left


def test_json_keeps_types(tmp_path: Path):
    c = _collect(OutputSpec(label="index"), _probs(2))
    write_rows(tmp_path / "s.jsonl", ["ImageId", "Label"], ["1", "2"], c, rows=[0, 1], fmt="jsonl")
    objs = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert all(isinstance(o["Label"], int) for o in objs) and [o["ImageId"] for o in objs] == ["1", "2"]


def test_format_from_suffix():
    assert format_for("a/sub.csv") == "csv"
    assert format_for("sub.JSONL") == "jsonl"
    assert format_for("sub.json") == "json"
    assert format_for("sub.txt") == "csv"
    assert format_for("sub.json", "csv") == "csv"
    with pytest.raises(FormatError):
        format_for("sub.csv", "xml")


def _sample(tmp_path: Path, text: str) -> SampleSubmission:
    f = tmp_path / "sample_submission.csv"
    f.write_text(text, encoding="utf-8")
    return SampleSubmission.read(f)


def test_sample_alignment_takes_its_order(tmp_path: Path):
    s = _sample(tmp_path, "ImageId,Label\n3,0\n1,0\n2,0\n")
    assert s.align(["1", "2", "3"]) == [2, 0, 1]
    header, order = s.columns_for(OutputSpec(), NAMES)
    assert header == ["ImageId", "Label"] and order is None


def test_sample_mismatch_names_both_sides(tmp_path: Path):
    s = _sample(tmp_path, "id,label\n1,x\n2,x\n5,x\n")
    with pytest.raises(FormatError) as e:
        s.align(["1", "2", "3", "4"])
    msg = str(e.value)
    assert "1 id(s) of sample_submission.csv have no image, e.g. ['5']" in msg
    assert "2 image(s) have no row in sample_submission.csv, e.g. ['3', '4']" in msg


def test_sample_with_file_names_suggests_id_from_name(tmp_path: Path):
    s = _sample(tmp_path, "file,label\na.jpg,x\nb.jpg,x\n")
    with pytest.raises(FormatError, match="--id-from name"):
        s.align(["a", "b"], id_from="stem")


def test_sample_probs_columns_reorder_by_class_name(tmp_path: Path):
    s = _sample(tmp_path, "id,fish,cat,dog,bird\n1,0,0,0,0\n")
    header, order = s.columns_for(OutputSpec(probs=True), NAMES)
    assert header == ["id", "fish", "cat", "dog", "bird"] and order.tolist() == [3, 0, 1, 2]
    bad = _sample(tmp_path, "id,fish,cat,cow,bird\n1,0,0,0,0\n")
    with pytest.raises(FormatError, match=r"not in the model: \['cow'\]; missing from the file: \['dog'\]"):
        bad.columns_for(OutputSpec(probs=True), NAMES)


def test_sample_column_count_must_match(tmp_path: Path):
    s = _sample(tmp_path, "id,a,b\n1,0,0\n")
    with pytest.raises(FormatError, match="has 3 columns"):
        s.columns_for(OutputSpec(), NAMES)


def test_sample_duplicates_and_empty(tmp_path: Path):
    with pytest.raises(FormatError, match="duplicate id"):
        _sample(tmp_path, "id,label\n1,a\n1,b\n")
    with pytest.raises(FormatError, match="no rows"):
        _sample(tmp_path, "id,label\n")
