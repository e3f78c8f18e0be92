"""`cvtool merge` reads every format `predict --shard` writes, empty shards included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_predict import image_folder, linear_onnx, read_csv
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.infer.shard import MergeError, merge_parts

runner = CliRunner()
NAMES = ("cat", "dog", "bird")
IDS = [str(i) for i in (1, 2, 3, 5, 8, 10, 13, 21, 34, 55, 89, 100)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return linear_onnx(root / "m.onnx", NAMES, seed=3), image_folder(root / "test", IDS, seed=1)


def _ok(*args: object) -> str:
    r = runner.invoke(app, [*map(str, args)])
    assert r.exit_code == 0, r.output
    return r.output


def _parts(model: Path, test: Path, out: Path, n: int, suffix: str, *opts: str) -> list[Path]:
    """Run every shard of n, then return what a shell glob `part*` would give merge."""
    out.mkdir(exist_ok=True)
    for i in range(1, n + 1):
        _ok("predict", test, "-m", model, "-o", out / f"part{i}{suffix}", "--shard", f"{i}/{n}", *opts)
    return sorted(out.glob("part*"))  # the .shard.json records too: merge passes over them


@pytest.mark.parametrize(
    "suffix,opts",
    [
        (".csv", ["--probs"]),
        (".json", ["--probs"]),
        (".jsonl", ["--probs"]),
        (".jsonl", ["--label", "index"]),
        (".out", ["--output-format", "jsonl", "--topk", "2"]),  # format told by the content
    ],
)
def test_shards_merge_to_the_unsharded_output(setup, tmp_path, suffix, opts):
    model, test = setup
    full = tmp_path / f"full{suffix}"
    _ok("predict", test, "-m", model, "-o", full, *opts)
    parts = _parts(model, test, tmp_path / "parts", 3, suffix, *opts)
    merged = tmp_path / f"merged{suffix}"
    out = _ok("merge", *parts, "-o", merged)
    assert "all 3 shards present, 12 ids as listed" in out
    assert "passed over part1.shard.json (a shard record)" in out
    assert merged.read_text() == full.read_text()


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_empty_shards_are_valid_parts(setup, tmp_path, suffix):
    model, _ = setup
    test = image_folder(tmp_path / "t", ["1", "2", "3"], seed=2)
    full = tmp_path / f"full{suffix}"
    _ok("predict", test, "-m", model, "-o", full, "--probs")
    parts = _parts(model, test, tmp_path / "parts", 5, suffix, "--probs")
    records = [json.loads(p.read_text()) for p in parts if p.name.endswith(".shard.json")]
    assert len(records) == 5 and sorted(r["ids_in_shard"] for r in records) == [0, 0, 1, 1, 1]
    merged = tmp_path / f"merged{suffix}"
    assert "all 5 shards present, 3 ids as listed" in _ok("merge", *parts, "-o", merged)
    assert merged.read_text() == full.read_text()


def test_an_empty_jsonl_part_needs_its_shard_record(setup, tmp_path):
    model, _ = setup
    test = image_folder(tmp_path / "t", ["1", "2", "3"], seed=2)
    parts = [p for p in _parts(model, test, tmp_path / "parts", 5, ".jsonl") if p.suffix == ".jsonl"]
    empty = next(p for p in parts if p.stat().st_size == 0)
    empty.with_name(empty.stem + ".shard.json").unlink()
    sample = tmp_path / "sample.csv"
    sample.write_text("id,label\n1,x\n2,x\n3,x\n")
    with pytest.raises(MergeError, match=rf"{empty.name}: empty file, and no {empty.stem}\.shard\.json"):
        merge_parts(parts, tmp_path / "m.jsonl", sample)


def test_json_parts_merge_into_csv(setup, tmp_path):
    model, test = setup
    full = tmp_path / "full.csv"
    _ok("predict", test, "-m", model, "-o", full, "--probs")
    parts = _parts(model, test, tmp_path / "parts", 2, ".json", "--probs")
    merged = tmp_path / "submission.csv"
    _ok("merge", *parts, "-o", merged)
    assert merged.read_text() == full.read_text()


def test_csv_parts_merge_into_jsonl_as_text(setup, tmp_path):
    model, test = setup
    parts = _parts(model, test, tmp_path / "parts", 2, ".csv", "--label", "index")
    merged = tmp_path / "merged.jsonl"
    _ok("merge", *parts, "-o", merged)
    objs = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [o["id"] for o in objs] == IDS
    assert all(isinstance(o["label"], str) and o["label"] in ("0", "1", "2") for o in objs)  # CSV is text


def test_mixed_formats_are_an_error_naming_the_files(setup, tmp_path):
    model, test = setup
    out = tmp_path / "parts"
    out.mkdir()
    _ok("predict", test, "-m", model, "-o", out / "part1.csv", "--shard", "1/2")
    _ok("predict", test, "-m", model, "-o", out / "part2.json", "--shard", "2/2")
    with pytest.raises(MergeError, match=r"different formats: part1\.csv \(csv\), part2\.json \(json\)"):
        merge_parts([out / "part1.csv", out / "part2.json"], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_unreadable_json_parts_name_the_file_and_line(tmp_path):
    bad = tmp_path / "part1.jsonl"
    bad.write_text('{"id": "1", "label": "cat"}\n{"id": "2", \n')
    with pytest.raises(MergeError, match=r"part1\.jsonl:2: not JSON"):
        merge_parts([bad], tmp_path / "m.jsonl")
    keys = tmp_path / "part2.json"
    keys.write_text('[{"id": "1", "label": "cat"}, {"id": "2", "class": "dog"}]')
    with pytest.raises(MergeError, match=r"part2\.json: row 2 has keys \['id', 'class'\]"):
        merge_parts([keys], tmp_path / "m.json")
    scalar = tmp_path / "part3.json"
    scalar.write_text('{"id": "1"}')
    with pytest.raises(MergeError, match=r"part3\.json: expected a list of objects"):
        merge_parts([scalar], tmp_path / "m.json")


def test_a_csv_part_without_header_is_still_an_error(tmp_path):
    empty = tmp_path / "part1.csv"
    empty.write_text("")
    with pytest.raises(MergeError, match=r"part1\.csv: empty file \(no header\)"):
        merge_parts([empty], tmp_path / "m.csv")
    assert read_csv(empty) == []
