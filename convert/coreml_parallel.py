"""A causal LM's decode function converted in a forked process while this one converts prefill.

The two functions' exports and pass pipelines are independent and each is single-threaded Python (torch.export's
tracing, coremltools' passes), so on two free cores the pair takes about as long as one: GPT-2 124M converts in
about two thirds of the time (docs/measurements.md). The child writes its function as a package in the
conversion's scratch folder; this process reads it back for the merge, as coremltools' own multifunction merge
reads every function.

Only where it is safe and pays: on Linux (forking a process that has loaded coremltools and torch is unsafe on
macOS, whose system frameworks are not fork-safe), with two cores this process may use, and with memory for a
second conversion beside the first (`FORK_MEMORY_FACTOR`); elsewhere the functions convert one after the other,
which writes the same package."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from canonical.errors import ConversionError

# Measured: converting GPT-2 124M (0.5 GB of fp32 weights) peaks at 2.4 GB resident, ~0.6 GB of it the libraries.
# A second conversion shares the parent's weights (copy on write) and needs about four times their fp32 size again;
# twice that leaves room for the page cache and the rest of the machine.
FORK_MEMORY_FACTOR = 8


def why_not_parallel(fp32_weight_bytes: int) -> str | None:
    """Why the functions cannot convert side by side here (None: they can)."""
    if sys.platform != "linux":
        return f"forking a converter is not safe on {sys.platform}"
    if len(os.sched_getaffinity(0)) < 2:
        return "one core"
    available = _available_memory()
    if available is None or available < FORK_MEMORY_FACTOR * fp32_weight_bytes:
        return "not enough free memory for two conversions"
    return None


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ForkedConversion:
    """`convert(path)` running in a forked child, which writes a package at `path`."""

    def __init__(self, convert: Callable[[Path], None], path: Path) -> None:
        context = multiprocessing.get_context("fork")
        self.path = path
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_child, args=(convert, path, send, os.getpid()), daemon=True)
        self._process.start()
        send.close()

    def result(self) -> Path:
        """Wait for the child; its package's path, or a ConversionError with the child's one-line reason."""
        self._process.join()
        try:  # nothing to read where the child died without a word (killed, out of memory)
            message = self._receive.recv() if self._receive.poll() else None
        except EOFError:
            message = None
        self._receive.close()
        if self._process.exitcode != 0 or message is not None:
            raise ConversionError(message or f"the decode conversion process died (exit code {self._process.exitcode})")
        return self.path

    def cancel(self) -> None:
        """Stop the child (this process failed or was interrupted) and wait for it to end."""
        if self._process.is_alive():
            self._process.kill()  # it holds nothing to clean up: its package is in the conversion's scratch folder
        self._process.join()
        self._receive.close()


def _child(convert: Callable[[Path], None], path: Path, send: Connection, parent: int) -> None:
    import torch

    _end_with(parent)
    # One thread: the parent converts on the other core. A forked child must not reuse the parent's OpenMP pool.
    torch.set_num_threads(1)
    try:
        convert(path)
        send.send(None)
    except BaseException as exc:  # reported to the parent, which raises it as one line
        send.send(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise SystemExit(1) from None
    finally:
        send.close()


def _end_with(parent: int) -> None:
    """The child ends with its parent, silently: Ctrl-C (sent to both) and the parent's death (SIGKILL included,
    through Linux's parent-death signal) end it without a word, and the parent reports what happened; a child left
    behind would write into a staging folder that is no longer anyone's."""
    import ctypes

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def save_and_discard(model, path: Path) -> None:
    """Write `model` (a just-converted MLModel) at `path` and remove coremltools' temporary copy of it, which an
    exit handler would remove in a normal process but not in a forked child (it leaves by os._exit)."""
    model.save(str(path))
    if getattr(model, "is_temp_package", False):
        shutil.rmtree(model.package_path, ignore_errors=True)
