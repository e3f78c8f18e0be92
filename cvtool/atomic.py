"""Atomic file output: write to a temporary file beside the target, then rename over it.

A run killed halfway (Ctrl-C, OOM, power) leaves either the previous file or the complete new one,
never half a CSV. The file gets the mode a plain open() would give it: 0o666 less the umask when new,
the old file's mode when it replaces one (mkstemp alone would make every output 0600).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_text"]


_umask_lock = threading.Lock()


def _current_umask(status: str = "/proc/self/status") -> int:
    """The process umask, read without changing it where Linux tells it (/proc, since 4.7)."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere only umask() reads it, by setting it. The lock keeps our own callers from seeing each
    # other's placeholder; 0o077 makes a file another thread creates meanwhile private, not open.
    with _umask_lock:
        old = os.umask(0o077)
        os.umask(old)
    return old


def _mode_for(path: Path) -> int:
    """The mode open(path, "w") would leave: the existing file's, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _set_mode(fd: int, path: Path) -> None:
    if not hasattr(os, "fchmod"):  # Windows: no such modes to keep
        return
    try:
        os.fchmod(fd, _mode_for(path))
    except OSError as e:
        # Filesystems without Unix modes (vfat, some network mounts) refuse chmod: write anyway.
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            _set_mode(f.fileno(), path)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Header + rows as CSV, written atomically (the whole file or nothing)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
