"""Atomic writes: the whole file or nothing, with the mode a plain open() would give."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvtool import atomic
from cvtool.atomic import atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_text


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_new_file_gets_0666_less_the_umask(tmp_path: Path, mask: int, want: int):
    with _umask(mask):
        atomic_write_text(tmp_path / "a.txt", "a")
        atomic_write_bytes(tmp_path / "b.bin", b"b")
        atomic_write_csv(tmp_path / "c.csv", ["id"], [["1"]])
        with open(tmp_path / "plain.txt", "w") as f:  # what the atomic writes must match
            f.write("p")
    assert _mode(tmp_path / "plain.txt") == want
    assert [_mode(tmp_path / n) for n in ("a.txt", "b.bin", "c.csv")] == [want] * 3


@pytest.mark.parametrize("existing", [0o600, 0o664])
def test_an_existing_file_keeps_its_mode(tmp_path: Path, existing: int):
    path = tmp_path / "s.csv"
    path.write_text("old")
    path.chmod(existing)
    with _umask(0o022):
        atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == existing


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "s.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_the_umask_is_read_without_changing_it(tmp_path: Path):
    with _umask(0o027):
        assert atomic._current_umask() == 0o027
        # Without /proc (not Linux): the umask()/umask() pair, which puts the umask back.
        assert atomic._current_umask(status=str(tmp_path / "no-such-status")) == 0o027
        assert os.umask(0o027) == 0o027
