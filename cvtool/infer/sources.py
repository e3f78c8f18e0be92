"""Which files to predict and what each row is called: listing, ids, ordering, shards.

Made for very large test folders: the folder is walked lazily (cvtool.data.walk_images, the lister
evaluate and training use too) and only two short strings per file are kept (its path relative to
the root and its id), never decoded data.
Ordering needs every id (numeric ids sort numerically, so the last file listed may come first),
which is why the list is built before decoding starts.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

from cvtool.data import DataError, file_keys, natural_key, read_csv_ids, walk_images
from cvtool.errors import CvtoolError

__all__ = [
    "ID_FROM",
    "Items",
    "SourceError",
    "id_of",
    "id_sort_key",
    "ids_digest",
    "in_shard",
    "list_items",
    "parse_shard",
    "shard_from_env",
]

IdFrom = Literal["stem", "name", "relpath"]
ID_FROM: tuple[str, ...] = get_args(IdFrom)


class SourceError(CvtoolError, ValueError):
    """The files to predict cannot be listed or named as asked; the message says why."""


def id_of(relpath: str, id_from: str = "stem") -> str:
    """The submission id of a file, from its POSIX path relative to the test folder."""
    # String operations rather than PurePosixPath: this runs once per file, a million times for a
    # million-image folder. Same results as PurePosixPath(relpath).name / .stem.
    name = relpath.rsplit("/", 1)[-1]
    if id_from == "stem":
        dot = name.rfind(".")
        return name[:dot] if 0 < dot < len(name) - 1 else name
    if id_from == "name":
        return name
    if id_from == "relpath":
        return relpath
    raise SourceError(f"--id-from must be one of {', '.join(ID_FROM)}, got {id_from!r}")


def id_sort_key(ids: list[str]) -> Callable[[str], object]:
    """Numeric ids sort as numbers (2 before 10); anything else naturally ("img2" < "img10")."""
    if ids and all(i.isdecimal() for i in ids):
        return int
    return natural_key


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of ids in output order: lets `merge` check that shards add up to the listing."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8") + b"\n")
    return h.hexdigest()


def parse_shard(text: str, shards: int | None = None, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """ "I/N" → (I, N), 1 ≤ I ≤ N: this run predicts shard I of N; "auto": from the scheduler
    (shard_from_env). `shards` (--shards N), when given, must agree."""
    if text.strip().lower() == "auto":
        return shard_from_env(shards, env)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SourceError(f"--shard takes I/N (e.g. 2/4) or auto, got {text!r}") from None
    if not 1 <= i <= n:
        raise SourceError(f"--shard {text}: I must be between 1 and N")
    if shards is not None and shards != n:
        raise SourceError(f"--shard {text} but --shards {shards}: give one or make them agree")
    return i, n


def _env_int(env: Mapping[str, str], name: str, low: int = 0) -> int:
    value = env[name]
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if n < low:
        raise SourceError(f"--shard auto: {name}={value!r} is not a whole number ≥ {low}")
    return n


def shard_from_env(shards: int | None, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(I, N) for this task of a SLURM job array or a Kubernetes Indexed Job.

    SLURM (--array=MIN-MAX:STEP): I = (SLURM_ARRAY_TASK_ID - MIN) / STEP + 1 of
    N = SLURM_ARRAY_TASK_COUNT. Kubernetes: I = JOB_COMPLETION_INDEX + 1 of N = `shards`, which
    must be given (a pod is not told the completion count). SourceError otherwise.
    """
    if shards is not None and shards < 1:
        raise SourceError(f"--shards must be at least 1, got {shards}")
    if "SLURM_ARRAY_TASK_ID" in env:
        return _slurm_shard(shards, env)
    if "JOB_COMPLETION_INDEX" in env:
        index = _env_int(env, "JOB_COMPLETION_INDEX")
        if shards is None:
            raise SourceError(
                f"--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) does not say "
                "how many shards there are: pass --shards N (the Job's completions)"
            )
        if index >= shards:
            raise SourceError(f"--shard auto: JOB_COMPLETION_INDEX={index} is not below --shards {shards}")
        return index + 1, shards
    raise SourceError(
        "--shard auto: neither SLURM_ARRAY_TASK_ID (a SLURM job array) nor JOB_COMPLETION_INDEX "
        "(a Kubernetes Indexed Job) is set; give --shard I/N"
    )


def _slurm_shard(shards: int | None, env: Mapping[str, str]) -> tuple[int, int]:
    # sbatch sets all of these in every task of an array; STEP and MAX are only cross-checks.
    absent = [v for v in ("SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT") if v not in env]
    if absent:
        raise SourceError(
            f"--shard auto: SLURM_ARRAY_TASK_ID is set but {', '.join(absent)} not set; give --shard I/N"
        )
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    low = _env_int(env, "SLURM_ARRAY_TASK_MIN")
    n = _env_int(env, "SLURM_ARRAY_TASK_COUNT", low=1)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", low=1) if "SLURM_ARRAY_TASK_STEP" in env else 1
    high = _env_int(env, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in env else low + step * (n - 1)
    where = f"--array={low}-{high}" + (f":{step}" if step != 1 else "")
    if high != low + step * (n - 1):
        raise SourceError(
            f"--shard auto: the SLURM array ({n} tasks from {low} to {high}) is not an evenly spaced "
            "range; use --array=MIN-MAX[:STEP], or give --shard I/N"
        )
    if task < low or task > high or (task - low) % step:
        raise SourceError(f"--shard auto: SLURM_ARRAY_TASK_ID={task} is not in {where}")
    i = (task - low) // step + 1
    if shards is not None and shards != n:
        raise SourceError(f"--shard auto: --shards {shards} but SLURM_ARRAY_TASK_COUNT={n} ({where})")
    return i, n


def in_shard(item_id: str, shard: tuple[int, int]) -> bool:
    """Whether `item_id` belongs to shard I of N: a stable hash of the id, the same on every machine
    and whatever order the files are listed in."""
    i, n = shard
    return zlib.crc32(item_id.encode("utf-8")) % n == i - 1


@dataclass
class Items:
    """The files to predict, in output order, with their ids."""

    root: Path
    relpaths: list[str]  # POSIX paths relative to root (or absolute, from --files)
    ids: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count, never silent
    total_ids: int = 0  # ids before sharding: what the merged shards must add up to
    ids_digest: str = ""  # sha256 of all ids (before sharding), in output order

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self) -> Iterator[Path]:
        """Full paths, made one at a time."""
        root = self.root
        return (root / r for r in self.relpaths)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def _read_list(root: Path, files: Path) -> Iterator[str]:
    """Entries of a --files list: one path per line, relative to the test folder; # comments."""
    try:
        f = open(files, encoding="utf-8-sig")
    except OSError as e:
        raise SourceError(f"{files}: cannot read: {e.strerror or e}") from e
    with f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if os.path.isabs(entry):
                p = Path(entry)
                try:
                    entry = p.relative_to(root).as_posix()
                except ValueError:
                    entry = p.as_posix()  # outside the folder: the id comes from the path as given
            entry = entry.replace("\\", "/")
            # Normalise "./a//b.png" to "a/b.png" only when needed (a million lines, often).
            yield PurePosixPath(entry).as_posix() if "//" in entry or "./" in entry else entry


def _read_csv_list(root: Path, files: Path, recursive: bool, items: Items) -> Iterator[str]:
    """Files named by the ids (first column) of a CSV: a labels CSV, a sample submission.

    An id names an image file in the folder (below it with `recursive`) by its stem or name, as in
    training and evaluation; an id without a file is kept as it is, to fail (and be listed) when
    decoded. Repeated ids are counted into `items.skipped`.
    """
    try:
        ids, duplicates = read_csv_ids(files)
    except DataError as e:
        raise SourceError(str(e)) from None
    if duplicates:
        items.skip(f"duplicate id in {files.name}", duplicates)
    wanted, matched = set(ids), set()
    # What the walk passes over (hidden files, …) was not asked for: not counted.
    for rel in walk_images(root, recursive, {}):
        key = next((k for k in file_keys(rel) if k in wanted), None)
        if key is not None:
            matched.add(key)
            yield rel
    yield from (i for i in ids if i not in matched)


def list_items(
    root: str | os.PathLike,
    *,
    recursive: bool = False,
    files: str | os.PathLike | None = None,
    id_from: str = "stem",
    shard: tuple[int, int] | None = None,
) -> Items:
    """List the files to predict, name them, sort them by id, keep this shard's.

    `files` limits them to a list: one path per line, or a CSV (by its .csv suffix) whose first
    column holds ids naming files by stem or name.
    Raises SourceError when the folder cannot be read, nothing is found, or two files would get the
    same id (the message names them and suggests an --id-from that tells them apart).
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    items = Items(root=root, relpaths=[], ids=[])
    if id_from not in ID_FROM:
        raise SourceError(f"--id-from must be one of {', '.join(ID_FROM)}, got {id_from!r}")
    if files is not None and Path(files).suffix.lower() == ".csv":
        source = _read_csv_list(root, Path(files), recursive, items)
    elif files is not None:
        source = _read_list(root, Path(files))
    else:
        source = walk_images(root, recursive, items.skipped)
    try:
        pairs = [(id_of(rel, id_from), rel) for rel in source]
    except DataError as e:  # the folder itself cannot be read
        raise SourceError(str(e)) from None
    if not pairs:
        where = files if files is not None else root
        raise SourceError(
            f"{where}: no image files found" + ("" if recursive or files else " (--recursive?)")
        )
    key = id_sort_key([i for i, _ in pairs])
    # The id itself breaks ties of the natural key ("Img1" vs "img1"): a total order, the same in merge.
    pairs.sort(key=lambda p: (key(p[0]), p[0]))
    dups = [pairs[k] for k in range(1, len(pairs)) if pairs[k][0] == pairs[k - 1][0]]
    if dups:
        first = dups[0][0]
        clash = [rel for i, rel in pairs if i == first]
        hint = {"stem": "--id-from name or relpath", "name": "--id-from relpath"}.get(id_from, "")
        raise SourceError(
            f"{len(dups)} duplicate id(s) such as {first!r} ({', '.join(clash[:3])})"
            + (f": use {hint}" if hint else "")
        )
    items.total_ids, items.ids_digest = len(pairs), ids_digest(i for i, _ in pairs)
    if shard is not None:
        pairs = [p for p in pairs if in_shard(p[0], shard)]
    items.ids = [i for i, _ in pairs]
    items.relpaths = [rel for _, rel in pairs]
    return items
