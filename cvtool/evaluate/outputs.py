"""Small pieces shared by the evaluation writers: CSV files written atomically, safe file names."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cvtool.atomic import atomic_write_text

__all__ = ["fresh_dir", "safe_filename", "write_csv"]


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Header + rows, written atomically (the whole file or nothing)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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
