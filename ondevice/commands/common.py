"""What every command shares: the consoles, the exit codes, and the one place that turns a user's mistake
into one line on stderr and exit 2: our own errors, option values checked here (ranges, NaN, 0 as a real
value), options that do not apply to what was asked, and filesystem errors on outputs."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from canonical.errors import InputError, OndeviceError
from ondevice import startup

console = Console()
errors = Console(stderr=True)

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"


class _ReaderMayLeave:
    """Standard output whose reader may go away (`ondevice verify ... | head -1`): what cannot be written is dropped
    (the descriptor is pointed at /dev/null) instead of failing the command, which then exits with its own status,
    its verdict, as if the reader had read everything."""

    def __init__(self, stream):
        self._stream = stream

    def _drop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def tolerate_closed_output() -> None:
    """For the console script: standard output survives its reader leaving, and text that the streams' encoding
    cannot hold (`PYTHONIOENCODING=ascii`) is written with replacement characters rather than failing."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="replace")
    if not isinstance(sys.stdout, _ReaderMayLeave):
        sys.stdout = _ReaderMayLeave(sys.stdout)


def error_line(message: str) -> None:
    """`error: MESSAGE` on stderr, on one line (the message is printed as is: no rich markup)."""
    errors.print(f"[red]error:[/red] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)


def _filesystem_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [name for name in (exc.filename, exc.filename2) if name]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def one_line_errors(command):
    """Print a user's mistake as `error: ...` and exit 2; Ctrl-C and SIGTERM exit 130 and 143 with one word.
    Everything else is a bug and keeps its traceback."""
    from convert.atomic import Terminated

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _unwind_on_interrupt()
        try:
            return command(*args, **kwargs)
        except Terminated:
            errors.print("terminated", highlight=False)
            raise typer.Exit(EXIT_TERMINATED) from None
        except (KeyboardInterrupt, Exception) as exc:
            if isinstance(exc, KeyboardInterrupt) or startup.interrupted():  # see startup.py: what a Ctrl-C broke
                errors.print("interrupted", highlight=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if isinstance(exc, OndeviceError):
                error_line(str(exc))
                raise typer.Exit(EXIT_BAD_INPUT) from None
            if isinstance(exc, OSError):  # an output path that cannot be written: a full disk, a read-only folder
                error_line(_filesystem_message(exc))
                raise typer.Exit(EXIT_BAD_INPUT) from None
            raise
        finally:
            _done_with_interrupts()

    return wrapper


def _done_with_interrupts() -> None:
    """The command has finished (its outputs written or cleaned up, its status decided): a Ctrl-C now would only
    kill the interpreter while it exits, turning that status into a death by SIGINT. Ignore it, in the console
    script only."""
    if signal.getsignal(signal.SIGINT) is startup.unwind_on_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _unwind_on_interrupt() -> None:
    """Replace `ondevice/startup.py`'s quiet exit on an early Ctrl-C: from here on Ctrl-C unwinds (and cleans up).
    Only in the console script, where startup installed its handler; a library caller keeps its own."""
    if signal.getsignal(signal.SIGINT) is startup.exit_on_interrupt:
        signal.signal(signal.SIGINT, startup.unwind_on_interrupt)


# Option values: each check raises InputError naming the option and what it takes.


def at_least(option: str, value: int | float | None, minimum: int | float) -> None:
    if value is not None and not value >= minimum:
        raise InputError(f"{option} {value}: must be at least {minimum}")


def finite(option: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InputError(f"{option} {value}: must be a finite number")


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def byte_size(option: str, value: str | None) -> int | None:
    """A size as typed: bytes, or a number with KB, MB, GB (powers of 1000) or KiB, MiB, GiB."""
    import re

    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", value, re.IGNORECASE)
    if match is None:
        raise InputError(f"{option} {value!r}: a size such as 950MB, 1GB or 500000000 (bytes)")
    size = int(float(match[1]) * _SIZE_UNITS[(match[2] or "").upper()])
    if size < 1:
        raise InputError(f"{option} {value!r}: must be at least one byte")
    return size


def one_of(option: str, value: object, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise InputError(f"{option} {value}: choose from {', '.join(map(str, choices))}")


def utf8_text(name: str, value: str | None) -> str | None:
    """A text argument as typed. The shell hands Python bytes, which it decodes with `surrogateescape`: bytes that
    are not UTF-8 arrive as lone surrogates, which no tokenizer can take; refuse them naming the first."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise InputError(f"{name} is not valid UTF-8 text ({byte} at character {exc.start})") from None
    return value


def output_path(option: str, value: str) -> Path:
    """An output location as typed: an empty one is a mistake, not the working directory."""
    from convert.locate import expand_user

    if not value.strip():
        raise InputError(f"{option} {value!r}: an empty path; name the output")
    return expand_user(value)


def not_applicable(given: dict[str, object], why: str) -> None:
    """Refuse the options in `given` (option name -> value, None when not given) that `why` excludes.
    `why` completes "OPTION applies ...": it says what the option applies to and what to use instead."""
    named = [name for name, value in given.items() if value not in (None, False, (), [])]
    if named:
        options = " and ".join(named)
        raise InputError(f"{options} {'applies' if len(named) == 1 else 'apply'} {why}")
