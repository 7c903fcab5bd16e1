"""The `ondevice` command: the subcommands of `ondevice/commands/`, each a thin shell over a library function.
Errors of our own types become one line on stderr and exit 2 (`commands/common.py`), never a traceback.

Importing this module imports no torch, coremltools or mlx: each command imports what it uses when it runs."""

from __future__ import annotations

import sys

import typer

from ondevice.commands import bench, convert, generate, inspect, predict, verify
from ondevice.commands.common import errors

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run Hugging Face transformer checkpoints on Apple Silicon: Neural Engine (Core ML), MLX, CPU.",
)
app.command()(verify.verify)
app.command()(convert.convert)
app.command()(generate.generate)
app.command()(predict.predict)
app.command(name="type")(predict.type_)
app.command()(inspect.inspect)
app.command()(bench.bench)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
