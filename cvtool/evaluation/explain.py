"""What `cvtool occlusion` and `cvtool cam` map: the image files given, and the class to map in each.

The target is `pred` (the predicted class), `true` (from an id,label CSV, a file-name pattern,
else the parent folder's name) or a class name; it is checked here, so the commands only parse
and print.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from cvtool.data import LabelSource, list_images, read_labels_csv, true_labels
from cvtool.evaluation.occlusion import MapRequest, OcclusionError
from cvtool.evaluation.outputs import safe_filename

__all__ = ["image_files", "map_requests", "occlusion_requests"]


def image_files(images: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder stands for the image files directly inside it."""
    out: list[Path] = []
    for p in map(Path, images):
        out.extend(list_images(p).files if p.is_dir() else [p])
    if not out:
        raise OcclusionError("no image files given")
    return out


def _true_classes(paths: list[Path], names: Sequence[str], labels: Path | None) -> list[int]:
    """True class of each image: from `labels` (id = file stem), else its parent folder's name."""
    index = {n: i for i, n in enumerate(names)}
    table = read_labels_csv(labels) if labels is not None else {}
    found = [index.get(table.get(p.stem, "") if labels is not None else p.parent.name) for p in paths]
    missing = [str(p) for p, k in zip(paths, found, strict=True) if k is None]
    if missing:
        where = f"in {labels}" if labels is not None else "as the parent folder name"
        raise OcclusionError(
            f"--target true: no known class {where} for {len(missing)} image(s), e.g. {missing[0]}; "
            "pass --labels id,label.csv or use --target pred or a class name"
        )
    return [k for k in found if k is not None]


def occlusion_requests(
    images: Sequence[str | os.PathLike],
    class_names: Sequence[str],
    target: str = "pred",
    labels: str | os.PathLike | None = None,
) -> list[MapRequest]:
    """One request per image file, named <n>_<stem>, mapping `target` (pred, true or a class name)."""
    names = list(class_names)
    if target not in ("pred", "true") and target not in names:
        raise OcclusionError(
            f"--target {target!r} is not pred, true or a class of the model ({', '.join(names[:10])})"
        )
    paths = image_files(images)
    if target == "pred":
        targets: list[tuple[int, ...]] = [()] * len(paths)
    elif target == "true":
        targets = [(k,) for k in _true_classes(paths, names, Path(labels) if labels is not None else None)]
    else:
        targets = [(names.index(target),)] * len(paths)
    width = len(str(len(paths)))
    return [
        MapRequest(f"{i:0{width}d}_{safe_filename(p.stem)}", p, t)
        for i, (p, t) in enumerate(zip(paths, targets, strict=True), start=1)
    ]


def map_requests(
    images: Sequence[str | os.PathLike],
    class_names: Sequence[str],
    target: str = "pred",
    labels: LabelSource | None = None,
) -> list[MapRequest]:
    """`occlusion_requests` with the true classes read the way training and evaluate read them:
    by `labels` (an id,label CSV or a file-name pattern), else the parent folder's name."""
    if target == "true" and labels is not None and labels.layout != "folders":
        requests = occlusion_requests(images, class_names, "pred")
        truth = true_labels([q.path for q in requests], labels, class_names)
        return [dataclasses.replace(q, targets=(k,), true=k) for q, k in zip(requests, truth, strict=True)]
    return occlusion_requests(images, class_names, target)
