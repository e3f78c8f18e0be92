"""`cvtool predict`: a Kaggle submission from ONNX model(s), without torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import console, err_console, progress_bar, report_models
from cvtool.cli.options import (
    DeviceOpt,
    OptionError,
    ThreadsOpt,
    VerboseOpt,
    WorkersOpt,
    card_options,
)
from cvtool.infer.formats import LabelKind, OutputFormat
from cvtool.infer.predict import OnError
from cvtool.infer.sources import IdFrom
from cvtool.tta import TtaMode


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",")]


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise OptionError(f"{flag} takes comma-separated numbers, got {text!r}") from None


@card_options
def predict(
    test_dir: Annotated[Path, typer.Argument(help="Folder of test images.")],
    model: Annotated[
        list[Path],
        typer.Option(
            "--model", "-m", help="ONNX model file; repeat for an ensemble (probabilities averaged)."
        ),
    ],
    card: dict[str, Any],
    model_weights: Annotated[
        str | None, typer.Option(help="Ensemble weights, comma-separated (e.g. 1,2).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path("submission.csv"),
    output_format: Annotated[
        OutputFormat | None, typer.Option(help="Default: from the output's suffix, else csv.")
    ] = None,
    id_from: Annotated[
        IdFrom, typer.Option(help="Row id: the file's stem, name, or relpath (under TEST_DIR).")
    ] = "stem",
    label: Annotated[
        LabelKind,
        typer.Option(
            help="name (class name), index (class index) or prob (probability of the positive class)."
        ),
    ] = "name",
    positive: Annotated[
        str | None, typer.Option(help="--label prob: the positive class (default: the second).")
    ] = None,
    clip: Annotated[
        float | None, typer.Option(help="Clip probabilities into [CLIP, 1-CLIP] (log-loss metrics).")
    ] = None,
    probs: Annotated[bool, typer.Option("--probs", help="One probability column per class.")] = False,
    topk: Annotated[
        int | None, typer.Option(min=1, help="The K most probable classes, one column each.")
    ] = None,
    sample_submission: Annotated[
        Path | None,
        typer.Option(help="The competition's sample file: its header, id column and row order are used."),
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Rename the output columns, e.g. ImageId,Label.")
    ] = None,
    files: Annotated[
        Path | None,
        typer.Option(
            help="Predict only the files listed: one path per line, or a .csv whose first column names them."
        ),
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Also look in sub-folders.")] = False,
    tta: Annotated[TtaMode, typer.Option(help="Test-time augmentation.")] = "none",
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: predict only shard I of N (then `cvtool merge`); auto: from SLURM or Kubernetes."
        ),
    ] = None,
    shards: Annotated[
        int | None, typer.Option(min=1, help="--shard auto: the number of shards (Kubernetes Indexed Jobs).")
    ] = None,
    on_error: Annotated[
        OnError,
        typer.Option(
            help="Unreadable images: fill (row with the most-predicted class, listed), "
            "skip (no row, listed) or fail (write nothing)."
        ),
    ] = "fill",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", min=1, help="Tensors per model call (default: 32 on CPU, 128 on GPU)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Predict every image in TEST_DIR and write a Kaggle submission (id,label by default)."""
    from cvtool.infer.formats import OutputSpec, SampleSubmission
    from cvtool.infer.predict import predict_to_file
    from cvtool.infer.predictor import Predictor
    from cvtool.infer.sources import list_items, parse_shard

    weights = _floats(model_weights, "--model-weights")
    spec = OutputSpec(label=label, probs=probs, topk=topk, clip=clip, positive=positive)
    if shards is not None and shard is None:
        raise OptionError("--shards goes with --shard auto (or I/N)")
    shard_ix = parse_shard(shard, shards) if shard is not None else None
    sample = SampleSubmission.read(sample_submission) if sample_submission is not None else None
    predictor = Predictor(
        model, device, weights=weights, overrides=card, tta=tta,
        batch_size=batch_size, workers=workers, threads=threads,
    )  # fmt: skip
    report_models(predictor.models, card, verbose)
    spec.check(predictor.class_names)
    t_list = time.perf_counter()
    items = list_items(test_dir, recursive=recursive, files=files, id_from=id_from, shard=shard_ix)
    listing = time.perf_counter() - t_list
    if shard_ix is not None:
        console.print(f"shard {shard_ix[0]}/{shard_ix[1]}: {len(items)} of {items.total_ids} files")
    batch = predictor.batch_size
    with progress_bar() as progress:
        task = progress.add_task("predict", total=len(items))
        r = predict_to_file(
            predictor.ensemble, items, output, spec,
            output_format=output_format, sample=sample, columns=_names(columns), id_from=id_from,
            on_error=on_error, batch_size=batch, workers=workers, tta=tta, shard=shard_ix,
            on_progress=lambda n: progress.advance(task, n),
        )  # fmt: skip

    if r.output is not None:
        console.print(
            f"wrote {r.output}: {r.rows} rows, {r.images_per_second:.0f} images/s on {r.provider}"
            + (f", batch {batch}" if verbose else "")
        )
    if verbose:
        r.times.listing = listing
        r.times.total += listing
        console.print(r.times.describe())
    for reason, n in sorted(items.skipped.items()):
        console.print(f"skipped {n} file(s): {reason}")
    if r.failed:
        what = {
            "fill": "filled with the most-predicted class",
            "skip": "left out",
            "fail": "nothing written (--on-error fail)",
        }[on_error]
        err_console.print(f"{len(r.failed)} image(s) could not be read ({what}); listed in {r.failures_file}")
        for p, reason in r.failed[:5]:
            err_console.print(f"  {p}: {reason}")
        raise typer.Exit(1)
