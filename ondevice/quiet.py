"""Keep third-party chatter off the terminal: coremltools' import notices (`Failed to load _MLModelProxy`,
the scikit-learn and torch version checks), its conversion progress bars and `Saving value type of int64`,
torch's and transformers' warnings. Inside `captured()` they are collected instead of printed; `--verbose`
shows them. Our own progress bars still reach the terminal, and a bug's traceback comes with what was
captured before it.

Captured: Python's `sys.stderr` (print, tqdm, logging's last-resort handler, rich consoles on stderr), the
`warnings` module, the handlers of the loggers named in LOGGERS, and, when stderr is the process's file
descriptor 2, whatever C code writes there."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

# Modules of ours that draw a progress bar with tqdm (module attribute `tqdm`): their bars stay visible when
# a command names them (`captured(own_bars=...)`; importing them costs torch, so only conversions do).
CONVERTER_BARS = ("convert.coreml", "convert.coreml_chunks")
LOGGERS = ("coremltools", "torch", "transformers", "huggingface_hub", "absl", "tensorflow")


@dataclass
class Captured:
    text: str = ""
    warnings: list[str] = field(default_factory=list)
    terminal: object = None  # while capturing: where our own lines still reach the user (else sys.stderr)

    def say(self, line: str) -> None:
        """One line of ours on stderr, captured or not."""
        print(line, file=self.terminal or sys.stderr, flush=True)  # type: ignore[arg-type]  # a text stream

    @property
    def lines(self) -> list[str]:
        found = [line for line in self.text.replace("\r", "\n").splitlines() if line.strip()]
        return found + self.warnings


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.sink.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _fd2_redirected(stream) -> Iterator[tuple[io.TextIOBase | None, IO[bytes] | None]]:
    """When `stream` writes to descriptor 2: point 2 at a temporary file; yield (a stream on the old fd 2,
    the temporary file). Otherwise yield (None, None)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd != 2:
        yield None, None
        return
    stream.flush()
    saved = os.dup(2)
    sink = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed by the caller, after reading it)
    os.dup2(sink.fileno(), 2)
    terminal = os.fdopen(
        os.dup(saved), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace"
    )
    try:
        yield terminal, sink
    finally:
        with contextlib.suppress(Exception):
            if sys.__stderr__ is not None:
                sys.__stderr__.flush()
        os.dup2(saved, 2)
        os.close(saved)
        with contextlib.suppress(Exception):
            terminal.close()


@contextlib.contextmanager
def captured(verbose: bool = False, own_bars: tuple[str, ...] = ()) -> Iterator[Captured]:
    """Collect third-party output on stderr instead of printing it (`verbose`: print everything as usual).
    `own_bars`: modules whose tqdm progress bars still draw on the terminal."""
    result = Captured()
    if verbose:
        yield result
        return
    real = sys.stderr
    buffer = io.StringIO()
    log_lines: list[str] = []
    handler = _ListHandler(log_lines)
    patched: list[tuple[object, str, object]] = []
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved_loggers = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    with _fd2_redirected(real) as (terminal, sink), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        own = terminal or real
        result.terminal = own
        for name in own_bars:
            with contextlib.suppress(Exception):
                module = importlib.import_module(name)
                bar = getattr(module, "tqdm", None)
                if bar is not None:
                    patched.append((module, "tqdm", bar))
                    setattr(module, "tqdm", functools.partial(bar, file=own))  # noqa: B010 (any module: no declared attribute)
        for lg in loggers:
            lg.handlers, lg.propagate = [handler], False
        sys.stderr = buffer
        failed = False
        try:
            yield result
        except BaseException as exc:
            # our own errors (one line), Ctrl-C and SIGTERM stay quiet; a bug shows what came before it
            from canonical.errors import OndeviceError
            from ondevice import startup

            failed = not (isinstance(exc, OndeviceError | KeyboardInterrupt | SystemExit) or startup.interrupted())
            raise
        finally:
            sys.stderr = real
            for owner, attribute, value in patched:
                setattr(owner, attribute, value)
            for lg, handlers, propagate in saved_loggers:
                lg.handlers, lg.propagate = handlers, propagate
            text = buffer.getvalue()
            if sink is not None:
                sink.seek(0)
                text += sink.read().decode("utf-8", errors="replace")
                sink.close()
            result.text = text + "".join(f"{line}\n" for line in log_lines)
            result.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
            if failed:
                with contextlib.suppress(Exception):
                    own.write(result.text + "".join(f"{line}\n" for line in result.warnings))
                    own.flush()
