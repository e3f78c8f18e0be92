"""Small pieces shared by the evaluation writers: atomic CSV files, safe names, fresh and stale outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from cvtool.atomic import atomic_write_csv

__all__ = ["fresh_dir", "relocated", "remove_stale", "safe_filename", "write_csv"]


# Header + rows, written atomically; kept under this name for the evaluate modules.
write_csv = atomic_write_csv


def safe_filename(name: str, limit: int = 80) -> str:
    """A file-name-safe form of a class name or stem: no separators, no leading dot, bounded length."""
    s = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).lstrip(".")
    return s[:limit] or "_"


@contextlib.contextmanager
def fresh_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """Build a folder beside its final place, then swap it in for parent/name.

    The folder never mixes files from two runs, and a run that fails halfway leaves the previous
    one intact (the partial folder is removed).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    try:
        yield tmp
        final = parent / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise


def remove_stale(folder: str | os.PathLike, known: Collection[str], written: Collection[str]) -> list[str]:
    """Remove the `known` outputs ("name" a file, "name/" a folder) that are not `written`.

    An earlier run's outputs would otherwise pass for this run's. Nothing else in the folder is
    touched, nor an entry of the other kind (a user's folder named like one of our files).
    Returns the names removed.
    """
    removed = []
    for name in known:
        if name in written:
            continue
        path = Path(folder) / name.rstrip("/")
        if name.endswith("/") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif not name.endswith("/") and (path.is_file() or path.is_symlink()):
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


M = TypeVar("M")


def relocated(item: M, folder: Path) -> M:
    """A map record (a `png` and `classes` each with an `npy`) with its files' paths in `folder`:
    maps are written into fresh_dir's temporary folder, which is then renamed into place."""
    record: Any = item  # CamImage or OcclusionMap: the same two fields
    classes = tuple(dataclasses.replace(c, npy=folder / c.npy.name) for c in record.classes)
    return cast(M, dataclasses.replace(record, png=folder / record.png.name, classes=classes))
