"""Small pieces shared by the evaluation writers: CSV files written atomically, safe file names."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cvtool.atomic import atomic_write_csv

__all__ = ["fresh_dir", "safe_filename", "write_csv"]


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
