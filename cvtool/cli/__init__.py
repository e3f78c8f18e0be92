"""The `cvtool` command line: thin Typer wrappers over plain functions, one module per command."""

# Importing a command module registers its command(s) on `app`.
from cvtool.cli import data_cmd, evaluate_cmd, export_cmd, predict_cmd, train_cmd, explain_cmd  # noqa: E402, F401, I001
from cvtool.cli import card_cmd, inspect_cmd, quantize_cmd  # noqa: E402, F401, I001
from cvtool.cli import merge_cmd  # noqa: E402, F401, I001
from cvtool.cli import summary_cmd  # noqa: E402, F401, I001
from cvtool.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
