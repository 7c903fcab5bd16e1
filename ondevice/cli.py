"""The `ondevice` command: the subcommands of `ondevice/commands/`, each a thin shell over a library function.
Errors of our own types become one line on stderr and exit 2 (`commands/common.py`), never a traceback; so do
mistakes in the command line itself (an unknown option, a missing argument), which click would print as a box.

Importing this module imports no torch, coremltools or mlx: each command imports what it uses when it runs."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from ondevice.commands import bench, convert, generate, inspect, predict, verify
from ondevice.commands.common import EXIT_BAD_INPUT, error_line, errors, tolerate_closed_output

# click's exception base class, which typer raises for usage errors (recent typers vendor click, so it is looked up
# from typer's public BadParameter rather than imported from either).
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineUsageErrors(TyperGroup):
    """A usage error (unknown option, missing argument, a value click cannot parse) as one `error:` line naming
    where to find help, exit 2; the command's own exit status otherwise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            errors.print("interrupted", highlight=False)
            sys.exit(130)
        except _CLICK_EXCEPTION as exc:
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:  # `ondevice` alone: the help
                print(context.get_help())
                sys.exit(0)
            where = f" ({context.command_path} --help)" if context is not None else ""
            error_line(f"{exc.format_message()}{where}")
            sys.exit(EXIT_BAD_INPUT)
        sys.exit(status if isinstance(status, int) else 0)


app = typer.Typer(
    name="ondevice",
    cls=_OneLineUsageErrors,
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
app.command()(predict.learned)
app.command()(inspect.inspect)
app.command()(bench.bench)


def main() -> None:
    tolerate_closed_output()
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
