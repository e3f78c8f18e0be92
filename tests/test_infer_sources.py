"""Listing test files: ids, ordering, nested folders, --files lists, duplicates, shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_predict import touch_files

from cvtool.infer.sources import SourceError, id_of, in_shard, list_items, parse_shard, shard_from_env


def test_numeric_ids_sort_numerically_and_skips_are_counted(tmp_path: Path):
    touch_files(tmp_path, "10.png", "2.jpg", "1.png", "100.png", ".DS_Store", "._3.png", "notes.txt")
    (tmp_path / "sub").mkdir()
    items = list_items(tmp_path)
    assert items.ids == ["1", "2", "10", "100"]
    assert items.relpaths == ["1.png", "2.jpg", "10.png", "100.png"]
    assert items.skipped == {"hidden file": 2, "not an image extension": 1}
    assert [p.name for p in items.paths()] == ["1.png", "2.jpg", "10.png", "100.png"]


def test_non_numeric_ids_sort_naturally(tmp_path: Path):
    touch_files(tmp_path, "img10.png", "img2.png", "Img1.png", "b.png")
    assert list_items(tmp_path).ids == ["b", "Img1", "img2", "img10"]


@pytest.mark.parametrize(
    "id_from,ids",
    [("relpath", ["a/1.png", "a/2.png", "b/1.png", "top.png"]), ("name", None), ("stem", None)],
)
def test_nested_folders(tmp_path: Path, id_from, ids):
    touch_files(tmp_path, "a/1.png", "a/2.png", "b/1.png", "top.png", "b/.hidden/9.png")
    if ids is None:  # two files called 1.png: stem and name cannot tell them apart
        with pytest.raises(SourceError, match=r"duplicate id.*'1(.png)?'.*a/1.png, b/1.png.*--id-from"):
            list_items(tmp_path, recursive=True, id_from=id_from)
    else:
        items = list_items(tmp_path, recursive=True, id_from=id_from)
        assert items.ids == ids
    assert list_items(tmp_path).ids == ["top"]  # not recursive: sub-folders are not read


def test_duplicate_stems_are_an_error_before_any_decoding(tmp_path: Path):
    touch_files(tmp_path, "1.png", "1.jpg", "2.png")
    with pytest.raises(SourceError, match="1 duplicate id.*'1'.*use --id-from name or relpath"):
        list_items(tmp_path)
    assert list_items(tmp_path, id_from="name").ids == ["1.jpg", "1.png", "2.png"]


def test_files_list(tmp_path: Path):
    touch_files(tmp_path, "a/3.png", "a/1.png", "b/2.png", "unlisted.png")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# test images\na/3.png\n\n{tmp_path}/b/2.png\na/1.png\nmissing.png\n")
    items = list_items(tmp_path, files=lst)
    # Listed files only, sorted by id; a missing one is kept, to fail (and be listed) when decoded.
    assert items.ids == ["1", "2", "3", "missing"]
    assert items.relpaths == ["a/1.png", "b/2.png", "a/3.png", "missing.png"]
    by_relpath = list_items(tmp_path, files=lst, id_from="relpath")
    assert by_relpath.ids == ["a/1.png", "a/3.png", "b/2.png", "missing.png"]


def test_empty_and_missing_folders(tmp_path: Path):
    with pytest.raises(SourceError, match="no image files found"):
        list_items(tmp_path)
    with pytest.raises(SourceError, match="not a directory"):
        list_items(tmp_path / "nope")
    with pytest.raises(SourceError, match="cannot read"):
        list_items(tmp_path, files=tmp_path / "nope.txt")


def test_id_of():
    assert id_of("a/b/12.png", "stem") == "12"
    assert id_of("a/b/12.png", "name") == "12.png"
    assert id_of("a/b/12.png", "relpath") == "a/b/12.png"
    with pytest.raises(SourceError):
        id_of("1.png", "path")


def test_shards_partition_the_ids(tmp_path: Path):
    names = [f"{i}.png" for i in range(1, 201)]
    touch_files(tmp_path, *names)
    full = list_items(tmp_path)
    parts = [list_items(tmp_path, shard=(i, 3)) for i in (1, 2, 3)]
    ids = [i for p in parts for i in p.ids]
    assert sorted(ids, key=int) == full.ids and len(set(ids)) == len(ids)  # no gap, no overlap
    assert all(40 < len(p) < 100 for p in parts)  # roughly balanced
    assert all(p.total_ids == 200 and p.ids_digest == full.ids_digest for p in parts)
    # Deterministic: the same id always lands in the same shard.
    assert all(in_shard(i, (k + 1, 3)) for k, p in enumerate(parts) for i in p.ids)


@pytest.mark.parametrize("text", ["0/3", "4/3", "1", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(SourceError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)


def test_an_empty_shard_of_a_non_empty_folder_is_not_an_error(tmp_path: Path):
    touch_files(tmp_path, "1.png", "2.png", "3.png")
    shards = [list_items(tmp_path, shard=(i, 5)) for i in range(1, 6)]
    assert sorted(len(s) for s in shards) == [0, 0, 1, 1, 1]
    empty = next(s for s in shards if not len(s))
    assert empty.ids == [] and empty.total_ids == 3


# --- --shard auto -------------------------------------------------------------------------------


def _slurm(task: int, lo: int, hi: int, step: int = 1, count: int | None = None) -> dict[str, str]:
    """The variables sbatch sets in each task of --array=lo-hi:step."""
    n = (hi - lo) // step + 1 if count is None else count
    return {
        "SLURM_ARRAY_JOB_ID": "4711",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(lo),
        "SLURM_ARRAY_TASK_MAX": str(hi),
        "SLURM_ARRAY_TASK_STEP": str(step),
        "SLURM_ARRAY_TASK_COUNT": str(n),
    }


@pytest.mark.parametrize(
    "env,want",
    [
        (_slurm(1, 1, 4), (1, 4)),
        (_slurm(4, 1, 4), (4, 4)),
        (_slurm(0, 0, 3), (1, 4)),
        (_slurm(12, 0, 12, step=4), (4, 4)),  # --array=0-12:4 → 0, 4, 8, 12
        (_slurm(7, 7, 7), (1, 1)),
    ],
)
def test_shard_from_slurm_array(env, want):
    assert shard_from_env(None, env) == want
    assert shard_from_env(want[1], env) == want
    assert parse_shard("auto", env=env) == want
    assert parse_shard("auto", want[1], env) == want


def test_shard_from_slurm_without_max_or_step():
    env = _slurm(3, 2, 5)
    del env["SLURM_ARRAY_TASK_MAX"], env["SLURM_ARRAY_TASK_STEP"]
    assert shard_from_env(None, env) == (2, 4)


@pytest.mark.parametrize(
    "env,shards,match",
    [
        (_slurm(2, 1, 4), 3, r"--shards 3 but SLURM_ARRAY_TASK_COUNT=4"),
        (_slurm(3, 1, 7, count=3), None, r"not an evenly spaced range.*--shard I/N"),  # --array=1,3,7
        (_slurm(3, 0, 6, step=2), None, r"SLURM_ARRAY_TASK_ID=3 is not in --array=0-6:2"),
        ({**_slurm(2, 1, 4), "SLURM_ARRAY_TASK_COUNT": "four"}, None, r"SLURM_ARRAY_TASK_COUNT='four'"),
        ({"SLURM_ARRAY_TASK_ID": "2"}, None, r"SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT not set"),
    ],
)
def test_shard_from_slurm_errors(env, shards, match):
    with pytest.raises(SourceError, match=match):
        shard_from_env(shards, env)


def test_shard_from_kubernetes_indexed_job():
    env = {"JOB_COMPLETION_INDEX": "0"}
    assert shard_from_env(4, env) == (1, 4)
    assert shard_from_env(4, {"JOB_COMPLETION_INDEX": "3"}) == (4, 4)
    assert parse_shard("auto", 4, env) == (1, 4)
    with pytest.raises(SourceError, match=r"JOB_COMPLETION_INDEX=0.*pass --shards N"):
        shard_from_env(None, env)
    with pytest.raises(SourceError, match=r"JOB_COMPLETION_INDEX=4 is not below --shards 4"):
        shard_from_env(4, {"JOB_COMPLETION_INDEX": "4"})
    with pytest.raises(SourceError, match=r"JOB_COMPLETION_INDEX='-1'"):
        shard_from_env(4, {"JOB_COMPLETION_INDEX": "-1"})


def test_shard_auto_without_a_scheduler_names_the_variables():
    with pytest.raises(SourceError, match=r"SLURM_ARRAY_TASK_ID.*JOB_COMPLETION_INDEX.*--shard I/N"):
        parse_shard("auto", env={"HOME": "/root"})
    with pytest.raises(SourceError, match=r"--shards must be at least 1"):
        shard_from_env(0, {"JOB_COMPLETION_INDEX": "0"})


def test_shards_must_agree_with_an_explicit_shard():
    assert parse_shard("2/4", 4) == (2, 4)
    with pytest.raises(SourceError, match=r"--shard 2/4 but --shards 3"):
        parse_shard("2/4", 3)


def test_files_csv_names_files_by_stem_or_name(tmp_path: Path):
    # A labels CSV (or a sample submission) as the list: its first column names the files.
    touch_files(tmp_path, "1.png", "2.jpg", "10.png", "cat.3.png", "unlisted.png", ".hidden.png")
    lst = tmp_path / "answers.csv"
    lst.write_text("id,label\n10,dog\n2.jpg,cat\ncat.3,cat\n1,dog\n1,dog\n77,cat\n")
    items = list_items(tmp_path, files=lst)
    # Listed ids only, sorted by id; one without a file is kept, to fail (and be listed) when decoded.
    assert items.ids == ["1", "2", "10", "77", "cat.3"]
    assert items.relpaths == ["1.png", "2.jpg", "10.png", "77", "cat.3.png"]
    assert items.skipped == {"duplicate id in answers.csv": 1}
    # Sub-folders only with --recursive, as when listing the folder itself.
    touch_files(tmp_path, "sub/77.png")
    assert list_items(tmp_path, files=lst).relpaths[3] == "77"
    assert list_items(tmp_path, files=lst, recursive=True).relpaths[3] == "sub/77.png"
    # The suffix decides: the same lines in a .txt are paths.
    txt = tmp_path / "answers.txt"
    txt.write_text("1.png\n10.png\n")
    assert list_items(tmp_path, files=txt).ids == ["1", "10"]
    bad = tmp_path / "empty.csv"
    bad.write_text("id,label\n")
    with pytest.raises(SourceError, match=r"empty\.csv: expected a header and one row per file"):
        list_items(tmp_path, files=bad)
