"""Scale-out: predict shard I of N on several machines, then merge the parts.

`predict --shard I/N` keeps the files whose id hashes to shard I (sources.in_shard) and writes,
beside its part, `<part>.shard.json`: which shard it is, and the count and SHA-256 of *all* ids
the run listed. `merge` checks that no id appears twice (overlaps), that every shard 1..N is
there, and that the merged ids are exactly the listed ones (gaps); with the competition's sample
file it checks the ids against that instead, and takes its row order.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.atomic import atomic_write_csv, atomic_write_text
from cvtool.errors import CvtoolError
from cvtool.infer.formats import FormatError, SampleSubmission
from cvtool.infer.sources import id_sort_key, ids_digest

__all__ = ["MergeError", "MergeResult", "merge_parts", "sidecar_path", "write_sidecar"]


class MergeError(CvtoolError, ValueError):
    """The parts do not add up to one submission; the message says what is wrong."""


def sidecar_path(part: str | os.PathLike) -> Path:
    part = Path(part)
    return part.with_name(part.stem + ".shard.json")


def write_sidecar(part: str | os.PathLike, info: dict[str, Any]) -> Path:
    path = sidecar_path(part)
    atomic_write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


@dataclass
class MergeResult:
    output: Path
    rows: int
    parts: int
    notes: list[str] = field(default_factory=list)  # what was checked, and files passed over


def _read_part(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise MergeError(f"{path}: cannot read: {e.strerror or e}") from e
    except csv.Error as e:
        raise MergeError(f"{path}: not a CSV file: {e}") from e
    if not rows:
        raise MergeError(f"{path}: empty file (no header)")
    return rows[0], rows[1:]


def _check_shards(parts: list[Path], infos: list[dict], ids: list[str], counts: dict[Path, int]) -> str:
    """Gaps, from the sidecars: all shards present, merged ids = the ids every shard listed."""
    ns = {info["shard"][1] for info in infos}
    digests = {(info["ids_total"], info["ids_sha256"]) for info in infos}
    if len(ns) != 1 or len(digests) != 1:
        raise MergeError(
            "the parts come from different runs (their shard counts or listed ids differ): "
            + ", ".join(f"{p.name}: shard {i['shard'][0]}/{i['shard'][1]} of {i['ids_total']} ids"
                        for p, i in zip(parts, infos, strict=True))
        )  # fmt: skip
    n = ns.pop()
    have: dict[int, Path] = {}
    for p, info in zip(parts, infos, strict=True):
        i = info["shard"][0]
        if i in have:
            raise MergeError(f"{have[i].name} and {p.name} are both shard {i}/{n}")
        have[i] = p
    missing = [i for i in range(1, n + 1) if i not in have]
    total, digest = digests.pop()
    if missing:
        raise MergeError(
            f"gap: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing; "
            f"{len(ids)} of {total} ids merged"
        )
    if len(ids) != total or ids_digest(ids) != digest:
        short = [
            f"{p.name} has {counts[p]} rows for its {info['ids_in_shard']} ids"
            for p, info in zip(parts, infos, strict=True)
            if counts[p] != info["ids_in_shard"]
        ]
        raise MergeError(
            f"gap: {len(ids)} ids merged but the shards listed {total}"
            + (f" ({'; '.join(short)}; unreadable images left out by --on-error skip?)" if short else "")
        )
    return f"all {n} shards present, {total} ids as listed"


def merge_parts(
    parts: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    sample_submission: str | os.PathLike | None = None,
) -> MergeResult:
    """Merge shard CSVs into one submission, checking for overlaps and gaps; written atomically."""
    output = Path(output)
    notes: list[str] = []
    paths: list[Path] = []
    for p in map(Path, parts):
        if p.name.endswith(".failures.csv"):
            notes.append(f"passed over {p.name} (a list of unreadable images)")
        elif p.resolve() == output.resolve():
            notes.append(f"passed over {p.name} (the output file)")
        else:
            paths.append(p)
    if not paths:
        raise MergeError("no parts to merge")
    header: list[str] | None = None
    where: dict[str, Path] = {}
    rows: dict[str, list[str]] = {}
    counts: dict[Path, int] = {}
    overlaps: list[str] = []
    for p in paths:
        h, body = _read_part(p)
        if header is None:
            header = h
        elif h != header:
            raise MergeError(f"{p.name} has header {h} but {paths[0].name} has {header}")
        counts[p] = len(body)
        for r in body:
            if r[0] in where:
                overlaps.append(f"{r[0]!r} in {where[r[0]].name} and {p.name}")
                continue
            where[r[0]] = p
            rows[r[0]] = r
    if overlaps:
        raise MergeError(
            f"overlap: {len(overlaps)} id(s) appear more than once, e.g. {'; '.join(overlaps[:3])}"
        )
    assert header is not None
    if sample_submission is not None:
        try:
            sample = SampleSubmission.read(sample_submission)
            ids = list(rows)
            order = [rows[ids[k]] for k in sample.align(ids)]
        except FormatError as e:
            raise MergeError(str(e)) from None
        if len(sample.header) != len(header):
            raise MergeError(
                f"{sample.path.name} has {len(sample.header)} columns but the parts have {len(header)}"
            )
        header = sample.header
        notes.append(f"ids match {sample.path.name} exactly; rows in its order")
    else:
        ids = list(rows)
        key = id_sort_key(ids)
        ids.sort(key=lambda i: (key(i), i))
        sidecars = [sidecar_path(p) for p in paths]
        if not all(s.is_file() for s in sidecars):
            absent = [s.name for s in sidecars if not s.is_file()]
            raise MergeError(
                f"cannot check for gaps: no {absent[0]} (written by predict --shard beside each part); "
                "give the competition's file with --sample-submission"
            )
        infos = []
        for s in sidecars:
            try:
                info = json.loads(s.read_text(encoding="utf-8"))
                _, _ = info["shard"]
                _ = info["ids_total"], info["ids_sha256"], info["ids_in_shard"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise MergeError(f"{s}: not a readable shard record ({type(e).__name__}: {e})") from e
            infos.append(info)
        notes.append(_check_shards(paths, infos, ids, counts))
        order = [rows[i] for i in ids]
    atomic_write_csv(output, header, order)
    return MergeResult(output=output, rows=len(order), parts=len(paths), notes=notes)
