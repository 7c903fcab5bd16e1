"""The `ondevice` console script's first moments: importing the CLI takes a few hundred milliseconds, and a
Ctrl-C then would print a traceback from inside an import. Until a command starts (`commands/common.py`
restores Python's own handler there, so that a command's Ctrl-C unwinds and cleans up), Ctrl-C prints
`interrupted` and exits 130: nothing has been written yet, so there is nothing to clean up.

From there on Ctrl-C raises KeyboardInterrupt as Python's own handler does, and also records that it came
(`interrupted()`): a Ctrl-C inside a native library's import can be swallowed there and resurface later as
another error (torch's C module imports numpy and clears any failure; torch then imports numpy again and gets
`RuntimeError: CPU dispatcher tracer already initlized`). What fails after a Ctrl-C failed because of it.

Imported first of all (`ondevice/__init__.py`), so it imports only what the interpreter has already loaded
(`_signal` rather than `signal`, whose enums take milliseconds to build)."""

from __future__ import annotations

import _signal
import os
import sys


def exit_on_interrupt(signum, frame) -> None:
    try:
        os.write(2, b"interrupted\n")
    finally:
        os._exit(130)


_interrupt_received = False


def unwind_on_interrupt(signum, frame) -> None:
    """Python's own Ctrl-C behaviour (KeyboardInterrupt, so `finally` blocks clean up), remembered."""
    global _interrupt_received
    _interrupt_received = True
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C came while `unwind_on_interrupt` was the handler (even if a library swallowed it)."""
    return _interrupt_received


def install() -> None:
    """Only in the console script (argv[0] is `ondevice`); only where signals can be set (the main thread)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") != "ondevice":
        return
    try:  # noqa: SIM105 (contextlib is one more import before the handler is in place)
        _signal.signal(_signal.SIGINT, exit_on_interrupt)
    except (ValueError, OSError):
        pass
