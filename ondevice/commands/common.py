"""What every command shares: the consoles, the exit codes, and the one place that turns our own errors into
one line on stderr."""

from __future__ import annotations

import functools
from enum import StrEnum

import typer
from rich.console import Console

from canonical.errors import OndeviceError

console = Console()
errors = Console(stderr=True)

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"


def one_line_errors(command):
    """Print our own errors as `error: ...` and exit 2; everything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OndeviceError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper
