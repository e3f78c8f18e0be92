"""Scale-out: predict shard I of N on several machines, then merge the parts.

`predict --shard I/N` keeps the files whose id hashes to shard I (sources.in_shard) and writes,
beside its part, `<part>.shard.json`: which shard it is, and the count and SHA-256 of *all* ids
the run listed. `merge` checks that no id appears twice (overlaps), that every shard 1..N is
there, and that the merged ids are exactly the listed ones (gaps); with the competition's sample
file it checks the ids against that instead, and takes its row order.

Parts may be in any format predict writes (csv, json, jsonl), all in the same one; the merged file
is written in the format of its suffix, else in the parts' format. A shard that got no ids is a
valid part: a CSV header, `[]`, or an empty JSONL file (which its .shard.json must vouch for).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.atomic import atomic_write_text
from cvtool.errors import CvtoolError
from cvtool.infer.formats import OUTPUT_FORMATS, FormatError, SampleSubmission, write_table
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


def _part_format(path: Path) -> str:
    """csv, json or jsonl: from the suffix, else from the first character (--output-format)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in OUTPUT_FORMATS:
        return suffix
    try:
        with open(path, "rb") as f:
            head = f.read(64).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError as e:
        raise MergeError(f"{path}: cannot read: {e.strerror or e}") from e
    return {b"[": "json", b"{": "jsonl"}.get(head[:1], "csv")


def _read_csv(path: Path) -> tuple[list[str], list[list[Any]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise MergeError(f"{path}: cannot read: {e.strerror or e}") from e
    except csv.Error as e:
        raise MergeError(f"{path}: not a CSV file: {e}") from e
    if not rows:
        raise MergeError(f"{path}: empty file (no header)")
    return rows[0], list(rows[1:])


def _parse_json(path: Path, text: str, fmt: str) -> Any:
    """The JSON value of a json file, or the list of values of a jsonl file's lines."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    objs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}:{lineno}: not JSON: {e.msg}") from None
    return objs


def _read_json(path: Path, fmt: str) -> tuple[list[str] | None, list[list[Any]]]:
    """Objects of a json list or jsonl lines → (their keys, their values); no header when empty."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from e
    objs = _parse_json(path, text, fmt)
    if not isinstance(objs, list):
        kind = type(objs).__name__
        raise MergeError(f"{path}: expected a list of objects (as predict writes), not a {kind}")
    header: list[str] | None = None
    rows: list[list[Any]] = []
    for k, obj in enumerate(objs, start=1):
        if not isinstance(obj, dict) or not obj:
            raise MergeError(f"{path}: row {k} is not an object with an id")
        keys = list(obj)
        if header is None:
            header = keys
        elif keys != header:
            raise MergeError(f"{path}: row {k} has keys {keys} but row 1 has {header}")
        values = list(obj.values())
        values[0] = str(values[0])  # the id: matched and sorted as text, as in CSV
        rows.append(values)
    return header, rows


def _read_part(path: Path, fmt: str) -> tuple[list[str] | None, list[list[Any]]]:
    """(header, rows) of a part; the header is None for a json/jsonl part without rows."""
    return _read_csv(path) if fmt == "csv" else _read_json(path, fmt)


def _read_sidecar(part: Path) -> dict[str, Any] | None:
    """The part's shard record, None when it has none."""
    s = sidecar_path(part)
    if not s.is_file():
        return None
    try:
        info = json.loads(s.read_text(encoding="utf-8"))
        _, _ = info["shard"]
        _ = info["ids_total"], info["ids_sha256"], info["ids_in_shard"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MergeError(f"{s}: not a readable shard record ({type(e).__name__}: {e})") from e
    return info


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


def _check_empty_jsonl(part: Path, sidecars: dict[Path, dict[str, Any] | None]) -> None:
    """An empty JSONL file is what a shard with no ids writes, and also what a lost part looks like:
    its shard record decides."""
    info = sidecars[part] = _read_sidecar(part)
    if info is None:
        says = f"and no {sidecar_path(part).name} to say that its shard has no ids"
    elif info["ids_in_shard"] != 0:
        says = f"but {sidecar_path(part).name} says its shard has {info['ids_in_shard']} ids"
    else:
        return
    raise MergeError(f"{part}: empty file, {says}")


def _collect(
    paths: list[Path], fmt: str, sidecars: dict[Path, dict[str, Any] | None]
) -> tuple[list[str] | None, dict[str, list[Any]], dict[Path, int]]:
    """(header, rows by id, rows per part) of all parts; MergeError on differing headers or overlaps."""
    header: list[str] | None = None
    header_from = ""
    where: dict[str, Path] = {}
    rows: dict[str, list[Any]] = {}
    counts: dict[Path, int] = {}
    overlaps: list[str] = []
    for p in paths:
        h, body = _read_part(p, fmt)
        if h is None:
            if fmt == "jsonl":
                _check_empty_jsonl(p, sidecars)
        elif header is None:
            header, header_from = h, p.name
        elif h != header:
            raise MergeError(f"{p.name} has header {h} but {header_from} has {header}")
        counts[p] = len(body)
        for r in body:
            if h is not None and len(r) != len(h):
                raise MergeError(f"{p}: the row of id {r[0]!r} has {len(r)} columns, the header {len(h)}")
            if r[0] in where:
                overlaps.append(f"{r[0]!r} in {where[r[0]].name} and {p.name}")
                continue
            where[r[0]] = p
            rows[r[0]] = r
    if overlaps:
        raise MergeError(
            f"overlap: {len(overlaps)} id(s) appear more than once, e.g. {'; '.join(overlaps[:3])}"
        )
    return header, rows, counts


def _select(parts: Sequence[str | os.PathLike], output: Path, notes: list[str]) -> list[Path]:
    """The parts to merge: failure lists, shard records and the output itself passed over."""
    paths: list[Path] = []
    for p in map(Path, parts):
        if p.name.endswith(".failures.csv"):
            notes.append(f"passed over {p.name} (a list of unreadable images)")
        elif p.name.endswith(".shard.json"):
            notes.append(f"passed over {p.name} (a shard record)")
        elif p.resolve() == output.resolve():
            notes.append(f"passed over {p.name} (the output file)")
        else:
            paths.append(p)
    if not paths:
        raise MergeError("no parts to merge")
    return paths


def merge_parts(
    parts: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    sample_submission: str | os.PathLike | None = None,
) -> MergeResult:
    """Merge shard parts into one submission, checking for overlaps and gaps; written atomically."""
    output = Path(output)
    notes: list[str] = []
    paths = _select(parts, output, notes)
    fmts = {p: _part_format(p) for p in paths}
    if len(set(fmts.values())) > 1:
        raise MergeError(
            "the parts are in different formats: "
            + ", ".join(f"{p.name} ({f})" for p, f in fmts.items())
            + "; merge parts of one format"
        )
    fmt = fmts[paths[0]]
    out_suffix = output.suffix.lower().lstrip(".")
    out_fmt = out_suffix if out_suffix in OUTPUT_FORMATS else fmt
    sidecars: dict[Path, dict[str, Any] | None] = {}
    header, rows, counts = _collect(paths, fmt, sidecars)
    if sample_submission is not None:
        try:
            sample = SampleSubmission.read(sample_submission)
            ids = list(rows)
            order = [rows[ids[k]] for k in sample.align(ids)]
        except FormatError as e:
            raise MergeError(str(e)) from None
        if header is not None and len(sample.header) != len(header):
            raise MergeError(
                f"{sample.path.name} has {len(sample.header)} columns but the parts have {len(header)}"
            )
        header = sample.header
        notes.append(f"ids match {sample.path.name} exactly; rows in its order")
    else:
        ids = list(rows)
        key = id_sort_key(ids)
        ids.sort(key=lambda i: (key(i), i))
        for p in paths:
            if p not in sidecars:
                sidecars[p] = _read_sidecar(p)
        absent = [sidecar_path(p).name for p in paths if sidecars[p] is None]
        if absent:
            raise MergeError(
                f"cannot check for gaps: no {absent[0]} (written by predict --shard beside each part); "
                "give the competition's file with --sample-submission"
            )
        infos = [sidecars[p] or {} for p in paths]
        notes.append(_check_shards(paths, infos, ids, counts))
        order = [rows[i] for i in ids]
        if header is None:  # every part empty: the shard records still say what the columns were
            header = next((list(i["header"]) for i in infos if i.get("header")), None)
    if header is None:
        raise MergeError("the parts have no rows and no header: nothing to merge")
    write_table(output, header, order, out_fmt)
    return MergeResult(output=output, rows=len(order), parts=len(paths), notes=notes)
