"""`cvtool predict`: a Kaggle submission from an ONNX model, without torch."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import (
    BatchOpt,
    ChannelsOpt,
    ClassesOpt,
    DeviceOpt,
    InterpOpt,
    MeanOpt,
    ModelOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    VerboseOpt,
    app,
    card_overrides,
    console,
    err_console,
    fail,
    open_onnx,
    progress_bar,
)


@app.command()
def predict(
    test_dir: Path = typer.Argument(..., help="Folder of images (flat, Kaggle-style)."),
    model: Path = ModelOpt,
    output: Path = typer.Option(Path("submission.csv"), "--output", "-o", help="CSV to write."),
    on_error: str = typer.Option(
        "fill",
        help="Unreadable images: fill (row with the most-predicted class, listed), "
        "skip (no row, listed) or fail (write nothing).",
    ),
    recursive: bool = typer.Option(False, help="Also look in sub-folders."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    workers: int | None = typer.Option(None, help="Decoding threads."),
    classes: str | None = ClassesOpt,
    size: str | None = SizeOpt,
    channels: int | None = ChannelsOpt,
    mean: str | None = MeanOpt,
    std: str | None = StdOpt,
    resize: str | None = ResizeOpt,
    interpolation: str | None = InterpOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Predict every image in TEST_DIR and write a Kaggle submission (id,label)."""
    from cvtool.data import DataError, list_images
    from cvtool.infer.pipeline import predict_files
    from cvtool.infer.submission import (
        ON_ERROR,
        SubmissionError,
        submission_rows,
        write_failures,
        write_submission,
    )

    if on_error not in ON_ERROR:
        raise fail(f"--on-error must be one of {', '.join(ON_ERROR)}")
    ov = card_overrides(classes, size, channels, mean, std, resize, interpolation)
    m = open_onnx(model, device, ov, verbose)
    try:
        scan = list_images(test_dir, recursive=recursive)
    except DataError as e:
        raise fail(str(e)) from None
    if not scan.files:
        raise fail(f"{test_dir}: no image files found")
    with progress_bar() as progress:
        task = progress.add_task("predict", total=len(scan.files))
        preds = predict_files(m, scan.files, batch_size, workers, lambda n: progress.advance(task, n))
    try:
        rows = submission_rows(preds, m.card.class_names, on_error)
    except SubmissionError as e:
        raise fail(str(e), code=1) from None
    write_submission(output, rows)
    console.print(
        f"wrote {output}: {len(rows)} rows, {preds.images_per_second:.0f} images/s on {preds.provider}"
    )
    for reason, n in sorted(scan.skipped.items()):
        console.print(f"skipped {n} file(s): {reason}")
    if preds.failed:
        fail_path = output.with_name(output.stem + ".failures.csv")
        write_failures(fail_path, preds.failed)
        what = "filled with the most-predicted class" if on_error == "fill" else "left out"
        err_console.print(
            f"{len(preds.failed)} image(s) could not be read ({what}); listed in {fail_path}",
            soft_wrap=True,
        )
        for p, reason in list(preds.failed.items())[:5]:
            err_console.print(f"  {p}: {reason}", soft_wrap=True)
        raise typer.Exit(1)
