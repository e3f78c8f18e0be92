"""Kaggle submission rows and files from hand-made Predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cvtool.infer.pipeline import Predictions
from cvtool.infer.submission import SubmissionError, submission_rows, write_failures, write_submission

CLASSES = ("cat", "dog", "bird")


def _preds(tmp_path: Path, names: list[str], top: list[int], failed: list[str] = ()) -> Predictions:
    """Predictions whose argmax for names[i] is top[i]."""
    probs = np.full((len(names), len(CLASSES)), 0.1, np.float32)
    for i, k in enumerate(top):
        probs[i, k] = 0.8
    return Predictions(
        paths=[tmp_path / n for n in names],
        probs=probs,
        failed={tmp_path / n: "not a recognised image" for n in failed},
    )


def test_numeric_ids_sort_numerically(tmp_path: Path):
    preds = _preds(tmp_path, ["10.png", "2.png", "1.png"], [0, 1, 2])
    assert submission_rows(preds, CLASSES) == [("1", "bird"), ("2", "dog"), ("10", "cat")]


def test_non_numeric_ids_sort_naturally(tmp_path: Path):
    preds = _preds(tmp_path, ["img10.jpg", "img2.jpg", "Img1.jpg", "b.png"], [0, 1, 2, 0])
    rows = submission_rows(preds, CLASSES)
    assert [r[0] for r in rows] == ["b", "Img1", "img2", "img10"]
    assert dict(rows) == {"img10": "cat", "img2": "dog", "Img1": "bird", "b": "cat"}


def test_mixed_ids_sort_naturally(tmp_path: Path):
    preds = _preds(tmp_path, ["10.png", "a.png", "2.png"], [0, 0, 0])
    assert [r[0] for r in submission_rows(preds, CLASSES)] == ["2", "10", "a"]


def test_fill_uses_most_predicted_class(tmp_path: Path):
    preds = _preds(tmp_path, ["1.png", "3.png", "4.png"], [2, 1, 2], failed=["2.png", "5.png"])
    rows = submission_rows(preds, CLASSES, on_error="fill")
    assert rows == [("1", "bird"), ("2", "bird"), ("3", "dog"), ("4", "bird"), ("5", "bird")]
    # "fill" is the default.
    assert submission_rows(preds, CLASSES) == rows


def test_fill_when_everything_failed(tmp_path: Path):
    preds = Predictions(
        paths=[],
        probs=np.zeros((0, 3), np.float32),
        failed={tmp_path / "7.png": "x", tmp_path / "3.png": "y"},
    )
    assert submission_rows(preds, CLASSES) == [("3", "cat"), ("7", "cat")]


def test_skip_omits_failed(tmp_path: Path):
    preds = _preds(tmp_path, ["1.png", "3.png"], [0, 1], failed=["2.png"])
    assert submission_rows(preds, CLASSES, on_error="skip") == [("1", "cat"), ("3", "dog")]


def test_fail_raises(tmp_path: Path):
    preds = _preds(tmp_path, ["1.png"], [0], failed=["2.png"])
    with pytest.raises(SubmissionError, match="1 image"):
        submission_rows(preds, CLASSES, on_error="fail")
    # Without failures, "fail" is fine.
    ok = _preds(tmp_path, ["1.png"], [0])
    assert submission_rows(ok, CLASSES, on_error="fail") == [("1", "cat")]


def test_bad_on_error_value(tmp_path: Path):
    with pytest.raises(ValueError, match="on_error"):
        submission_rows(_preds(tmp_path, ["1.png"], [0]), CLASSES, on_error="ignore")


def test_duplicate_stems_raise(tmp_path: Path):
    preds = _preds(tmp_path, ["1.png", "1.jpg", "2.png"], [0, 1, 2])
    with pytest.raises(SubmissionError, match="duplicate id.*'1'"):
        submission_rows(preds, CLASSES)


def test_duplicate_stem_between_predicted_and_failed(tmp_path: Path):
    preds = _preds(tmp_path, ["1.png"], [0], failed=["1.jpg"])
    with pytest.raises(SubmissionError, match="duplicate"):
        submission_rows(preds, CLASSES, on_error="fill")
    # Skipping the failed file removes the clash.
    assert submission_rows(preds, CLASSES, on_error="skip") == [("1", "cat")]


def test_write_submission(tmp_path: Path):
    out_dir = tmp_path / "out"
    rows = [("1", "cat"), ("2", "T-shirt/top"), ("10", "a, b")]
    path = write_submission(out_dir / "submission.csv", rows)
    assert path == out_dir / "submission.csv"
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["id", "label"], ["1", "cat"], ["2", "T-shirt/top"], ["10", "a, b"]]
    assert path.read_text(encoding="utf-8").splitlines()[0] == "id,label"
    assert [p.name for p in out_dir.iterdir()] == ["submission.csv"]


def test_write_submission_custom_header_and_overwrite(tmp_path: Path):
    path = tmp_path / "sub.csv"
    write_submission(path, [("1", "a")])
    write_submission(path, [("5", "b")], header=("ImageId", "Label"))
    assert path.read_text().splitlines() == ["ImageId,Label", "5,b"]
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_interrupted_write_keeps_previous_file(tmp_path: Path):
    path = tmp_path / "sub.csv"
    write_submission(path, [("1", "a")])
    with pytest.raises(csv.Error):
        write_submission(path, [("2", "b"), 3])  # not a row: the writer fails halfway
    assert path.read_text().splitlines() == ["id,label", "1,a"]
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_write_failures(tmp_path: Path):
    failed = {tmp_path / "10.png": "empty file", tmp_path / "2.png": "not a recognised image"}
    path = write_failures(tmp_path / "failures.csv", failed)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["path", "reason"],
        [str(tmp_path / "2.png"), "not a recognised image"],
        [str(tmp_path / "10.png"), "empty file"],
    ]
