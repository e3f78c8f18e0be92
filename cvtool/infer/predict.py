"""A submission file from a folder of images: list, align, predict, write.

`predict_to_file` is what `cvtool predict` runs once it has parsed its options and opened the
model(s). The files are listed and named first (sources.py), put in the sample submission's order
when there is one (formats.py), then streamed through the decoding pipeline and the model(s)
(pipeline.py) into per-row results, and written atomically with the list of unreadable files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from cvtool import __version__
from cvtool.atomic import atomic_write_csv
from cvtool.infer.ensemble import Ensemble
from cvtool.infer.formats import Collector, FormatError, OutputSpec, SampleSubmission, format_for, write_rows
from cvtool.infer.pipeline import run_batches
from cvtool.infer.session import OnnxModel
from cvtool.infer.shard import sidecar_path, write_sidecar
from cvtool.infer.sources import Items, in_shard
from cvtool.timing import StageTimes

__all__ = ["ON_ERROR", "PredictResult", "failures_path", "predict_to_file"]

OnError = Literal["fill", "skip", "fail"]
ON_ERROR: tuple[str, ...] = get_args(OnError)


@dataclass
class PredictResult:
    output: Path | None  # None when nothing was written (--on-error fail with failures)
    rows: int  # rows written
    images: int  # files run through the pipeline, read or not
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0  # decoding + model, the part that scales with the files
    provider: str = ""
    failures_file: Path | None = None
    sidecar: Path | None = None
    times: StageTimes = field(default_factory=StageTimes)  # the listing is the caller's to add

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def failures_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".failures.csv")


def _write_failures(path: Path, failed: list[tuple[Path, str]]) -> None:
    atomic_write_csv(path, ["path", "reason"], ((str(p), r) for p, r in failed))


def predict_to_file(
    model: Ensemble | OnnxModel,
    items: Items,
    output: str | os.PathLike,
    spec: OutputSpec | None = None,
    *,
    output_format: str | None = None,
    sample: SampleSubmission | None = None,
    columns: list[str] | None = None,
    id_from: str = "stem",
    on_error: str = "fill",
    batch_size: int = 32,
    workers: int | None = None,
    tta: str = "none",
    shard: tuple[int, int] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PredictResult:
    """Predict `items` with `model` and write the submission to `output`.

    Raises FormatError before any decoding when the options, the sample file or `columns` do not
    fit (ids missing on either side, wrong column count, …). Unreadable images never stop the run:
    per `on_error` they are filled (the run's most predicted class), skipped, or make the run
    write nothing (`fail`); either way they are listed in `<output>.failures.csv`.
    """
    output = Path(output)
    model = model if isinstance(model, Ensemble) else Ensemble([model])
    spec = spec or OutputSpec()
    if on_error not in ON_ERROR:
        raise FormatError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    fmt = format_for(output, output_format)
    names = model.class_names
    spec.check(names)
    header, value_order = spec.columns(names), None
    order: range | list[int] = range(len(items))  # output position → index into items
    if sample is not None:
        if shard is not None:  # this shard's part of the sample
            sample = SampleSubmission(
                sample.path, sample.header, [i for i in sample.ids if in_shard(i, shard)]
            )
        order = sample.align(items.ids, id_from)
        header, value_order = sample.columns_for(spec, names)
    if columns is not None:
        if len(columns) != len(header):
            raise FormatError(
                f"--columns names {len(columns)} columns but the output has {len(header)} "
                f"({', '.join(header[:6])})"
            )
        header = list(columns)
    if len(set(header)) != len(header):
        raise FormatError(f"column names must be unique, got {header}")

    coll = Collector(len(items), names, spec)
    failed_rows: list[int] = []
    failed: list[tuple[Path, str]] = []
    n = 0
    times = StageTimes()
    t0 = time.perf_counter()
    # Decode in output order, so a batch is a run of consecutive output positions.
    paths = (items.root / items.relpaths[i] for i in order)
    for b in run_batches(model, paths, batch_size, workers, tta, times):
        pos = [order[n + j] for j in range(len(b.paths))]
        coll.add([pos[j] for j in b.ok], b.probs)
        for j, reason in b.failed:
            failed_rows.append(pos[j])
            failed.append((b.paths[j], reason))
        n += len(b.paths)
        if on_progress:
            on_progress(len(b.paths))
    seconds = time.perf_counter() - t0
    t_write = time.perf_counter()
    result = PredictResult(
        output=None, rows=0, images=n, failed=failed, seconds=seconds, provider=model.provider, times=times
    )
    if failed:
        result.failures_file = failures_path(output)
        _write_failures(result.failures_file, failed)
    else:  # a list left by an earlier run would now be wrong
        failures_path(output).unlink(missing_ok=True)
    if failed and on_error == "fail":
        times.writing = time.perf_counter() - t_write
        times.total = time.perf_counter() - t0
        return result
    if on_error == "fill":
        coll.fill(failed_rows)
    skip = set(failed_rows) if on_error == "skip" else set()
    rows = (i for i in order if i not in skip)
    result.rows = write_rows(output, header, items.ids, coll, rows=rows, columns=value_order, fmt=fmt)
    result.output = output
    if shard is None:  # a shard record left by an earlier run would mislead `merge`
        sidecar_path(output).unlink(missing_ok=True)
    else:
        result.sidecar = write_sidecar(
            output,
            {
                "shard": list(shard),
                "ids_total": items.total_ids,
                "ids_sha256": items.ids_digest,
                "ids_in_shard": len(items),
                "rows": result.rows,
                "header": header,
                "id_from": id_from,
                "models": [str(m.path) for m in model.models],
                "cvtool": __version__,
            },
        )
    times.writing = time.perf_counter() - t_write
    times.total = time.perf_counter() - t0
    return result
