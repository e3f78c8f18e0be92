"""`cvtool merge`: one submission from the parts written by `predict --shard I/N`."""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import console, fail


def merge(
    parts: list[Path] = typer.Argument(
        ..., help="Part CSVs (e.g. part*.csv); failure lists are passed over."
    ),
    output: Path = typer.Option(Path("submission.csv"), "--output", "-o", help="CSV to write."),
    sample_submission: Path | None = typer.Option(
        None, help="The competition's sample file: ids must match it exactly; its row order is used."
    ),
) -> None:
    """Merge shard parts, checking that no id is missing (gaps) or predicted twice (overlaps)."""
    from cvtool.infer.shard import MergeError, merge_parts

    try:
        r = merge_parts(parts, output, sample_submission)
    except MergeError as e:
        raise fail(str(e)) from None
    for note in r.notes:
        console.print(note)
    console.print(f"wrote {r.output}: {r.rows} rows from {r.parts} part(s)")
