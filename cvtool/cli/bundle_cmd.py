"""`cvtool bundle`: cvtool, its runtime wheels and models in one folder, for notebooks without internet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.bundle.wheels import DEFAULT_PLATFORM
from cvtool.cli.common import console, err_console


def bundle(
    models: Annotated[list[Path], typer.Argument(help="ONNX models, each carrying a cvtool card.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to write (refused when not empty, unless --force).")
    ],
    python: Annotated[
        str | None, typer.Option(help="Target Python version X.Y (default: the running one).")
    ] = None,
    platform: Annotated[
        str,
        typer.Option(help="Target wheel platform tag; a manylinux tag also takes older glibc wheels."),
    ] = DEFAULT_PLATFORM,
    cpu: Annotated[
        bool, typer.Option("--cpu", help="Bundle onnxruntime instead of onnxruntime-gpu.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT when it is not empty.")] = False,
) -> None:
    """Write an offline bundle for a Kaggle code competition: wheels/, models/, README.md, bundle.json.

    wheels/ holds cvtool's wheel and its runtime dependencies (no PyTorch) from `pip download`, for
    the target Python and platform; README.md has the notebook cells that install and predict.
    """
    from cvtool.bundle import bundle as make_bundle

    r = make_bundle(
        models, output, python=python, platform=platform, cpu=cpu, force=force, log=err_console.print
    )
    console.print(
        f"wrote {r.out_dir}: {len(r.wheels)} wheels ({r.wheels_bytes / 1e6:.1f} MB, "
        f"cvtool {r.cvtool_version}, {r.ort_package}) for CPython {r.target.python} on {r.target.platform}, "
        f"{len(r.models)} model(s)"
    )
    console.print(
        f"  {r.out_dir / 'README.md'}: the notebook cells; {r.out_dir / 'bundle.json'}: the manifest"
    )
