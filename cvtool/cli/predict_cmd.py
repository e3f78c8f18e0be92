"""`cvtool predict`: a Kaggle submission from ONNX model(s), without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cvtool.cli.common import (
    ChannelsOpt,
    ClassesOpt,
    InterpOpt,
    MeanOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    VerboseOpt,
    app,
    card_overrides,
    console,
    err_console,
    fail,
    progress_bar,
)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",")]


def _open_models(
    paths: list[Path],
    device: str,
    overrides: dict[str, Any],
    verbose: bool,
    threads: int | None,
    batch_size: int | None,
) -> list:
    """Open every model on the device (exit 2 with the reason when one cannot be used)."""
    from cvtool.infer.session import DeviceError, ModelError, default_batch_size, open_model

    # TensorRT sizes its engine for the largest batch: it needs the batch size up front.
    trt_batch = batch_size or default_batch_size("TensorrtExecutionProvider")
    models = []
    for path in paths:
        try:
            m = open_model(path, device, overrides, threads, batch_size=trt_batch)
        except (DeviceError, ModelError) as e:
            raise fail(str(e)) from None
        if not m.has_card and not overrides:
            err_console.print(f"warning: {path} carries no cvtool card; using defaults (see --verbose)")
        if verbose:
            source = "file card" if m.has_card else "defaults"
            console.print(f"{path} — card ({source}" + (" + CLI overrides" if overrides else "") + "):")
            console.print(m.card.describe())
            console.print(f"provider: {m.provider}")
        models.append(m)
    return models


@app.command()
def predict(
    test_dir: Path = typer.Argument(..., help="Folder of test images."),
    model: list[Path] = typer.Option(
        ..., "--model", "-m", help="ONNX model file; repeat for an ensemble (probabilities averaged)."
    ),
    model_weights: str | None = typer.Option(None, help="Ensemble weights, comma-separated (e.g. 1,2)."),
    output: Path = typer.Option(Path("submission.csv"), "--output", "-o", help="File to write."),
    output_format: str | None = typer.Option(
        None, help="csv, json or jsonl (default: from the output's suffix, else csv)."
    ),
    id_from: str = typer.Option("stem", help="Row id: the file's stem, name, or relpath (under TEST_DIR)."),
    label: str = typer.Option(
        "name", help="name (class name), index (class index) or prob (probability of the positive class)."
    ),
    positive: str | None = typer.Option(None, help="--label prob: the positive class (default: the second)."),
    clip: float | None = typer.Option(
        None, help="Clip probabilities into [CLIP, 1-CLIP] (log-loss metrics)."
    ),
    probs: bool = typer.Option(False, "--probs", help="One probability column per class."),
    topk: int | None = typer.Option(None, min=1, help="The K most probable classes, one column each."),
    sample_submission: Path | None = typer.Option(
        None, help="The competition's sample file: its header, id column and row order are used."
    ),
    columns: str | None = typer.Option(None, help="Rename the output columns, e.g. ImageId,Label."),
    files: Path | None = typer.Option(
        None, help="Predict only the files listed (one per line, under TEST_DIR)."
    ),
    recursive: bool = typer.Option(False, help="Also look in sub-folders."),
    tta: str = typer.Option("none", help="Test-time augmentation: none, flip, flip+crops."),
    shard: str | None = typer.Option(None, help="I/N: predict only shard I of N (then `cvtool merge`)."),
    on_error: str = typer.Option(
        "fill",
        help="Unreadable images: fill (row with the most-predicted class, listed), "
        "skip (no row, listed) or fail (write nothing).",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, help="Tensors per model call (default: 32 on CPU, 128 on GPU)."
    ),
    device: str = typer.Option(
        "auto", help="auto (CUDA when it really loads, else CPU), cpu, cuda or tensorrt (strict)."
    ),
    workers: int | None = typer.Option(None, min=1, help="Decoding threads (default: one per core)."),
    threads: int | None = typer.Option(None, min=1, help="ONNX Runtime threads (default: one per core)."),
    classes: str | None = ClassesOpt,
    size: str | None = SizeOpt,
    channels: int | None = ChannelsOpt,
    mean: str | None = MeanOpt,
    std: str | None = StdOpt,
    resize: str | None = ResizeOpt,
    interpolation: str | None = InterpOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Predict every image in TEST_DIR and write a Kaggle submission (id,label by default)."""
    from cvtool.infer.ensemble import Ensemble, EnsembleError
    from cvtool.infer.formats import FormatError, OutputSpec, SampleSubmission
    from cvtool.infer.predict import ON_ERROR, predict_to_file
    from cvtool.infer.session import default_batch_size
    from cvtool.infer.sources import SourceError, list_items, parse_shard
    from cvtool.infer.tta import TTA_MODES

    if on_error not in ON_ERROR:
        raise fail(f"--on-error must be one of {', '.join(ON_ERROR)}")
    if tta not in TTA_MODES:
        raise fail(f"--tta must be one of {', '.join(TTA_MODES)}")
    weights = None
    if model_weights is not None:
        try:
            weights = [float(w) for w in model_weights.split(",")]
        except ValueError:
            raise fail(f"--model-weights takes comma-separated numbers, got {model_weights!r}") from None
    spec = OutputSpec(label=label, probs=probs, topk=topk, clip=clip, positive=positive)
    try:
        shard_ix = parse_shard(shard) if shard is not None else None
        sample = SampleSubmission.read(sample_submission) if sample_submission is not None else None
    except (SourceError, FormatError) as e:
        raise fail(str(e)) from None

    ov = card_overrides(classes, size, channels, mean, std, resize, interpolation)
    models = _open_models(model, device, ov, verbose, threads, batch_size)
    try:
        ens = Ensemble(models, weights)
        spec.check(ens.class_names)
        items = list_items(test_dir, recursive=recursive, files=files, id_from=id_from, shard=shard_ix)
    except (EnsembleError, FormatError, SourceError) as e:
        raise fail(str(e)) from None
    if shard_ix is not None:
        console.print(f"shard {shard_ix[0]}/{shard_ix[1]}: {len(items)} of {items.total_ids} files")
    batch = batch_size or default_batch_size(ens.provider)
    with progress_bar() as progress:
        task = progress.add_task("predict", total=len(items))
        try:
            r = predict_to_file(
                ens, items, output, spec,
                output_format=output_format, sample=sample, columns=_names(columns), id_from=id_from,
                on_error=on_error, batch_size=batch, workers=workers, tta=tta, shard=shard_ix,
                on_progress=lambda n: progress.advance(task, n),
            )  # fmt: skip
        except FormatError as e:
            raise fail(str(e)) from None

    if r.output is not None:
        console.print(
            f"wrote {r.output}: {r.rows} rows, {r.images_per_second:.0f} images/s on {r.provider}"
            + (f", batch {batch}" if verbose else "")
        )
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
