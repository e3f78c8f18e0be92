"""Small pieces shared by the evaluation writers: CSV files written atomically, safe file names."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cvtool.atomic import atomic_write_text

__all__ = ["safe_filename", "write_csv"]


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
