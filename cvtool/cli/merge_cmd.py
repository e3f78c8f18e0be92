"""`cvtool merge`: one submission from the parts written by `predict --shard I/N`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import console


def merge(
    parts: Annotated[
        list[Path],
        typer.Argument(
            help="Parts written by predict --shard (e.g. part*.csv); failure lists are passed over."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path("submission.csv"),
    sample_submission: Annotated[
        Path | None,
        typer.Option(help="The competition's sample file: ids must match it exactly; its row order is used."),
    ] = None,
) -> None:
    """Merge shard parts, checking that no id is missing (gaps) or predicted twice (overlaps)."""
    from cvtool.infer.shard import merge_parts

    r = merge_parts(parts, output, sample_submission)
    for note in r.notes:
        console.print(note)
    console.print(f"wrote {r.output}: {r.rows} rows from {r.parts} part(s)")
