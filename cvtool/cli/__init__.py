"""The `cvtool` command line: thin Typer commands over plain functions (see cli/app.py)."""

from cvtool.cli.app import app, main

__all__ = ["app", "main"]
