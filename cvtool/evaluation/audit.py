"""`audit()`: duplicate images within and across folders (train ↔ test leakage), and label conflicts.

Three kinds of twins (cvtool/evaluation/imagehash.py has the rules and how they are found):

- exact: the same decoded pixels (any lossless re-encoding);
- near: perceptual hashes within `distance` bits and 8×8 thumbnails within `max_diff` grey
  levels (a JPEG re-encode, a small resize);
- feature (with a model): cosine similarity ≥ `similarity` of the model's penultimate features
  (the input of its last Gemm/MatMul), for pairs the hashes did not already group. The default,
  0.998, is strict because a classifier's features describe its classes more than the image: on
  Fashion-MNIST (a 2-epoch cnn4) 0.95 gave 89 % of the test images a "twin", 0.99 32 %, 0.998 2 %
  (pairs of different trousers), while JPEG re-encodes scored 0.985-1.0 (bench/RESULTS.md).

A group is a connected set: each member is a twin of at least one other member. Exact copies are
searched once (one representative per set of identical images), so a thousand copies of one
image cost one hash comparison, not half a million. A group whose members carry different labels
is a label conflict: the same picture under two classes.

Outputs in `out_dir`: duplicates.csv (group, kind, file, folder, label, distance, conflict; one
row per member of each group; files as absolute paths), summary.json (folders, settings, counts,
the summary lines), audit.html (cvtool/evaluation/audit_report.py) and unreadable.csv when some
images could not be decoded. `evaluate --exclude-leaks` reads them back (cvtool/evaluation/leaks.py).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cvtool.atomic import atomic_write_text
from cvtool.data import labeled_files, list_images, scan_image_folder
from cvtool.decode import default_workers
from cvtool.errors import CvtoolError
from cvtool.evaluation.features import penultimate_features
from cvtool.evaluation.imagehash import (
    MAX_DISTANCE,
    Components,
    cosine_pairs,
    fingerprint,
    near_pairs,
    phash,
    thumbnails,
)
from cvtool.evaluation.outputs import remove_stale, write_csv
from cvtool.images import ImageError, load_image

__all__ = ["KINDS", "AuditError", "AuditFolder", "AuditResult", "Group", "audit"]

Kind = Literal["exact", "near", "feature"]
KINDS: tuple[Kind, ...] = ("exact", "near", "feature")  # strongest first
OUTPUTS = ("duplicates.csv", "summary.json", "audit.html", "unreadable.csv")
_CHUNK = 256  # files per decoding task


class AuditError(CvtoolError, ValueError):
    """The folders or settings of an audit are unusable; the message says which and why."""


@dataclass(frozen=True)
class AuditFolder:
    """One audited folder: where, what it is called in the outputs, and what was found in it."""

    path: Path
    name: str
    images: int
    labeled: bool
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Twins: indices into AuditResult.files, and each one's distance to its nearest twin (bits for
    exact and near, 1 - cosine similarity for feature)."""

    id: int
    kind: Kind
    members: list[int]
    distance: list[float]
    conflict: bool  # members carry two or more different labels


@dataclass
class AuditResult:
    """Everything an audit found; `summary_json()` is summary.json."""

    folders: list[AuditFolder]
    files: list[Path]  # every image decoded, in folder order
    folder_of: np.ndarray  # (N,) index into folders
    labels: list[str]  # per file; "" where the folder gives none
    groups: list[Group]
    # (folder, other folder) → {kind: images of folder whose strongest twin in the other is that kind}
    across: dict[tuple[str, str], dict[str, int]]
    within: dict[str, dict[str, int]]  # folder → {kind: images with a twin in the same folder}
    settings: dict[str, Any]
    unreadable: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> dict[str, int]:
        return {k: sum(g.conflict for g in self.groups if g.kind == k) for k in KINDS}

    def summary_lines(self) -> list[str]:
        """One line per ordered pair of folders and per folder, then the label conflicts."""
        lines = []
        for (a, b), counts in self.across.items():
            lines.append(_line(a, counts, f"in {b}"))
        for name, counts in self.within.items():
            lines.append(_line(name, counts, f"within {name}"))
        c = self.conflicts
        lines.append(
            f"label conflicts: {sum(c.values())} group(s) hold images under different labels"
            + (f" ({_kinds(c)})" if sum(c.values()) else "")
        )
        return lines

    def summary_json(self) -> dict[str, Any]:
        return {
            "folders": [
                {
                    "name": f.name,
                    "path": str(f.path.absolute()),
                    "images": f.images,
                    "labeled": f.labeled,
                    "skipped": f.skipped,
                }
                for f in self.folders
            ],
            "settings": self.settings,
            "groups": {k: sum(g.kind == k for g in self.groups) for k in KINDS},
            "across": [{"folder": a, "other": b, **counts} for (a, b), counts in self.across.items()],
            "within": [{"folder": a, **counts} for a, counts in self.within.items()],
            "label_conflicts": self.conflicts,
            "unreadable": len(self.unreadable),
            "seconds": round(self.seconds, 2),
            "lines": self.summary_lines(),
        }


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def _line(name: str, counts: dict[str, int], where: str) -> str:
    total = sum(counts.values())
    if not total:
        return f"{name}: no image has a twin {where}"
    return f"{name}: {total} image(s) have a twin {where} ({_kinds(counts)})"


def _read_folders(
    dirs: Sequence[Path], labels: Sequence[Path]
) -> tuple[list[AuditFolder], list[Path], list[int], list[str]]:
    """List every folder: class sub-folders give labels; a flat folder takes the next --labels CSV."""
    real = [os.path.realpath(d) for d in dirs]
    for i, a in enumerate(real):
        for j, b in enumerate(real):
            if i != j and (a == b or b.startswith(a.rstrip(os.sep) + os.sep)):
                raise AuditError(f"{dirs[j]} is {'the same folder as' if a == b else 'inside'} {dirs[i]}")
    base = [d.name or str(d) for d in dirs]
    names = [b if base.count(b) == 1 else str(d) for b, d in zip(base, dirs, strict=True)]
    csvs = deque(labels)
    folders, files, folder_of, file_labels = [], [], [], []
    for k, (d, name) in enumerate(zip(dirs, names, strict=True)):
        scan = list_images(d)  # DataError when it is not a folder
        subdirs = sum(e.is_dir() and not e.name.startswith(".") for e in d.iterdir())
        if subdirs and not scan.files:  # class sub-folders: an ImageFolder tree
            s = scan_image_folder(d)
            paths, labs, skipped, labeled = s.paths, [s.classes[y] for y in s.labels], dict(s.skipped), True
        else:
            paths, skipped = scan.files, dict(scan.skipped)
            if subdirs:
                skipped["sub-folders of a flat folder (not searched)"] = subdirs
            labs, labeled = [""] * len(paths), bool(csvs)
            if csvs:
                table = labeled_files(d, None, csvs.popleft())
                by_path = {
                    os.fspath(p): table.classes[y] for p, y in zip(table.paths, table.labels, strict=True)
                }
                labs = [by_path.get(os.fspath(p), "") for p in paths]
                if labs.count(""):
                    skipped["images without a label (audited, unlabeled)"] = labs.count("")
        folders.append(AuditFolder(d, name, len(paths), labeled, skipped))
        files += paths
        folder_of += [k] * len(paths)
        file_labels += labs
    if csvs:
        raise AuditError(
            f"{len(labels)} --labels given but only {len(labels) - len(csvs)} flat folder(s) to label"
        )
    return folders, files, folder_of, file_labels


def _fingerprints(
    paths: Sequence[Path], workers: int, on_progress: Callable[[int], None] | None
) -> Iterator[tuple[int, list[bytes | None], np.ndarray, dict[int, str]]]:
    """(start, digests or None, (n, 32, 32) grays, {index: reason}) per chunk, in order, decoded ahead."""

    def work(start: int) -> tuple[int, list[bytes | None], np.ndarray, dict[int, str]]:
        chunk = paths[start : start + _CHUNK]
        digests: list[bytes | None] = []
        grays = np.zeros((len(chunk), 32, 32), np.uint8)
        failed = {}
        for i, p in enumerate(chunk):
            try:
                fp = fingerprint(load_image(p))  # RGB, EXIF-oriented, full size: the pixels as shown
                digests.append(fp.digest)
                grays[i] = fp.gray
            except ImageError as e:
                digests.append(None)
                failed[start + i] = e.reason
        return start, digests, grays, failed

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvtool-audit") as pool:
        starts = iter(range(0, len(paths), _CHUNK))
        pending: deque[Future] = deque()
        while True:
            while len(pending) < workers + 1 and (s := next(starts, None)) is not None:
                pending.append(pool.submit(work, s))
            if not pending:
                return
            result = pending.popleft().result()
            if on_progress:
                on_progress(len(result[1]))
            yield result


SMALL_IMAGE = 128 * 128  # pixels


def _hash_workers(paths: Sequence[Path]) -> int:
    """Decoding threads when none are asked for: one for small images, else one per core.

    A small image costs more Python than decoding, and Python holds the GIL: a second thread made
    70,000 Fashion-MNIST PNGs (28×28) take 22 s instead of 12 s on 2 cores, while it made 640×480
    JPEGs 1.8× faster (bench/RESULTS.md). The first file that opens stands for the rest.
    """
    from PIL import Image

    for p in paths[:16]:
        try:
            with Image.open(p) as img:
                return 1 if img.width * img.height <= SMALL_IMAGE else default_workers()
        except (OSError, ValueError, SyntaxError):
            continue  # unreadable: reported when it is decoded
    return default_workers()


def _groups_of(labels: np.ndarray) -> list[np.ndarray]:
    """Members of each component with two or more, as sorted index arrays, by first member."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    parts = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b - a > 1]
    return sorted(parts, key=lambda m: int(m[0]))


def audit(
    dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Sequence[str | os.PathLike] = (),
    *,
    distance: int = 4,
    max_diff: float = 3.0,
    model: str | os.PathLike | None = None,
    similarity: float = 0.998,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    html: bool = True,
) -> AuditResult:
    """Find exact, near and (with `model`) feature twins in and across `dirs`; write the outputs."""
    if not 0 <= distance <= MAX_DISTANCE:
        raise AuditError(f"--distance {distance}: must be between 0 and {MAX_DISTANCE} bits")
    if not -1.0 <= similarity <= 1.0:
        raise AuditError(f"--similarity {similarity}: a cosine similarity lies in [-1, 1]")
    t0 = time.perf_counter()
    folders, all_files, all_folder_of, all_labels = _read_folders(
        [Path(d) for d in dirs], [Path(c) for c in labels]
    )
    if on_start:
        on_start(len(all_files))
    n_all = len(all_files)
    digests: list[bytes | None] = [None] * n_all
    hashes = np.zeros(n_all, np.uint64)
    thumbs = np.zeros((n_all, 64), np.float32)
    unreadable: dict[Path, str] = {}
    for start, ds, grays, failed in _fingerprints(
        all_files, workers or _hash_workers(all_files), on_progress
    ):
        digests[start : start + len(ds)] = ds
        hashes[start : start + len(ds)] = phash(grays)
        thumbs[start : start + len(ds)] = thumbnails(grays)
        unreadable.update({all_files[i]: r for i, r in failed.items()})
    ok = np.array([d is not None for d in digests], bool)
    keep = np.flatnonzero(ok)
    files = [all_files[i] for i in keep]
    folder_of = np.asarray(all_folder_of, np.int64)[keep]
    file_labels = [all_labels[i] for i in keep]
    hashes, thumbs = hashes[keep], thumbs[keep]

    # Exact: one representative (the first) per digest.
    first: dict[bytes, int] = {}
    rep_of = np.empty(len(files), np.int64)
    for i, k in enumerate(keep):
        d = digests[k]
        assert d is not None
        rep_of[i] = first.setdefault(d, i)
    reps = np.flatnonzero(rep_of == np.arange(len(files)))
    copies = np.bincount(rep_of, minlength=len(files))[rep_of] > 1  # has an exact twin

    found: list[tuple[Kind, np.ndarray, np.ndarray]] = []  # (kind, members, distance per member)
    for members in _groups_of(rep_of):
        found.append(("exact", members, np.zeros(len(members))))

    # Near, between representatives: pHash candidates, confirmed by the thumbnails.
    near = Components(len(reps))
    near_best = np.full(len(reps), np.inf)
    for pi, pj, bits in near_pairs(hashes[reps], distance):
        agree = np.abs(thumbs[reps[pi]] - thumbs[reps[pj]]).mean(axis=1) <= max_diff
        pi, pj, bits = pi[agree], pj[agree], bits[agree]
        near.merge(pi, pj)
        np.minimum.at(near_best, pi, bits)
        np.minimum.at(near_best, pj, bits)
    near_labels = near.labels()
    found += _expand("near", near_labels, near_best, reps, rep_of, copies)

    if model is not None:
        features = penultimate_features(model, [files[r] for r in reps], device, batch_size, workers)
        feat = Components(len(reps))
        feat_best = np.full(len(reps), np.inf)
        for pi, pj, sim in cosine_pairs(features, similarity):
            new = near_labels[pi] != near_labels[pj]  # pairs the hashes grouped already add nothing
            pi, pj, sim = pi[new], pj[new], sim[new]
            feat.merge(pi, pj)
            np.minimum.at(feat_best, pi, 1.0 - sim)
            np.minimum.at(feat_best, pj, 1.0 - sim)
        found += _expand("feature", feat.labels(), feat_best, reps, rep_of, copies)

    groups = [
        Group(
            id=g,
            kind=kind,
            members=members.tolist(),
            distance=dist.tolist(),
            conflict=len({file_labels[m] for m in members} - {""}) > 1,
        )
        for g, (kind, members, dist) in enumerate(found, start=1)
    ]
    names = [f.name for f in folders]
    r = AuditResult(
        folders=folders,
        files=files,
        folder_of=folder_of,
        labels=file_labels,
        groups=groups,
        across=_across(groups, folder_of, names),
        within=_within(groups, folder_of, names),
        settings={
            "distance": distance,
            "max_diff": max_diff,
            "model": None if model is None else str(model),
            "similarity": similarity if model is not None else None,
        },
        unreadable=unreadable,
    )
    r.seconds = time.perf_counter() - t0
    _write(r, Path(out_dir), html)
    return r


def _expand(
    kind: Kind, labels: np.ndarray, best: np.ndarray, reps: np.ndarray, rep_of: np.ndarray, copies: np.ndarray
) -> list[tuple[Kind, np.ndarray, np.ndarray]]:
    """Groups of representatives → groups of files (each representative with its exact copies)."""
    out: list[tuple[Kind, np.ndarray, np.ndarray]] = []
    rep_pos = {int(r): k for k, r in enumerate(reps)}
    by_rep: dict[int, list[int]] = {}
    for i, r in enumerate(rep_of.tolist()):
        by_rep.setdefault(r, []).append(i)
    for part in _groups_of(labels):
        members = sorted(m for k in part for m in by_rep[int(reps[k])])
        dist = np.array([0.0 if copies[m] else best[rep_pos[int(rep_of[m])]] for m in members])
        out.append((kind, np.asarray(members, np.int64), dist))
    return out


def _across(
    groups: list[Group], folder_of: np.ndarray, names: list[str]
) -> dict[tuple[str, str], dict[str, int]]:
    """Per ordered pair of folders: images of the first whose strongest twin in the second is each kind."""
    strongest: dict[tuple[int, int], int] = {}  # (file, other folder) → kind rank
    for g in groups:
        present = {int(folder_of[m]) for m in g.members}
        if len(present) < 2:
            continue
        rank = KINDS.index(g.kind)
        for m in g.members:
            for other in present - {int(folder_of[m])}:
                key = (m, other)
                strongest[key] = min(strongest.get(key, rank), rank)
    out: dict[tuple[str, str], dict[str, int]] = {
        (a, b): {k: 0 for k in KINDS} for a in names for b in names if a != b
    }
    for (m, other), rank in strongest.items():
        out[(names[int(folder_of[m])], names[other])][KINDS[rank]] += 1
    return out


def _within(groups: list[Group], folder_of: np.ndarray, names: list[str]) -> dict[str, dict[str, int]]:
    """Per folder: images with a twin in the same folder, by the strongest kind."""
    strongest: dict[int, int] = {}
    for g in groups:
        per: dict[int, list[int]] = {}
        for m in g.members:
            per.setdefault(int(folder_of[m]), []).append(m)
        for ms in per.values():
            if len(ms) > 1:
                for m in ms:
                    strongest[m] = min(strongest.get(m, 9), KINDS.index(g.kind))
    out: dict[str, dict[str, int]] = {n: {k: 0 for k in KINDS} for n in names}
    for m, rank in strongest.items():
        out[names[int(folder_of[m])]][KINDS[rank]] += 1
    return out


def _write(r: AuditResult, out: Path, html: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in r.folders]
    rows = []
    for g in r.groups:
        for m, d in zip(g.members, g.distance, strict=True):
            dist = f"{d:.4f}" if g.kind == "feature" else str(int(d))
            rows.append(
                [g.id, g.kind, str(r.files[m].absolute()), names[int(r.folder_of[m])], r.labels[m], dist,
                 "yes" if g.conflict else "no"]
            )  # fmt: skip
    write_csv(
        out / "duplicates.csv", ["group", "kind", "file", "folder", "label", "distance", "conflict"], rows
    )
    r.written = ["duplicates.csv", "summary.json"]
    if r.unreadable:
        write_csv(
            out / "unreadable.csv", ["path", "reason"], [[str(p), why] for p, why in r.unreadable.items()]
        )
        r.written.append("unreadable.csv")
    if html:
        r.written.append("audit.html")
    atomic_write_text(out / "summary.json", json.dumps(r.summary_json(), indent=2, ensure_ascii=False))
    remove_stale(out, OUTPUTS, r.written)
    if html:
        from cvtool.evaluation.audit_report import write_audit_html

        write_audit_html(out / "audit.html", r)
