"""Write outputs so that nothing is lost and nothing is left half-written.

Every output is built under a temporary name beside its destination (`.NAME.XXXX.partial/`), renamed on
success and removed on failure, on Ctrl-C and on SIGTERM; a later write into the same folder removes the
staging folders of runs that were killed outright (SIGKILL, power loss): each records its owner's pid.

`--overwrite` replaces only what this package wrote earlier: a folder holding our marker file (MARKER, which
lists what we wrote there) and nothing else, or an empty folder. Never a file, a symbolic link, the source
checkpoint or a folder holding it, the working directory or one above it, or a folder with anything else in
it: those are refused in one line, and the destination is left as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from canonical.errors import ConversionError

MARKER = ".ondevice-output.json"  # in every output folder we write: {"written_by", "entries", ...}
WRITTEN_BY = "ondevice-transformers"
OWNER = ".owner"  # in a staging folder: the pid of the process writing it
STALE_WITHOUT_OWNER_S = 600.0  # a staging folder with no owner file (older versions) is stale after this


class Terminated(SystemExit):
    """SIGTERM while an output is being written: unwinds like Ctrl-C, so the partial output is removed."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_marker(directory: Path) -> dict | None:
    """Our marker in `directory`, or None when there is none (or it is not ours)."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != WRITTEN_BY:
        return None
    return marker


def _write_marker(directory: Path, record: dict | None) -> None:
    entries = sorted(name for name in os.listdir(directory) if name != MARKER)
    marker = {**(read_marker(directory) or {}), **(record or {}), "written_by": WRITTEN_BY, "entries": entries}
    (directory / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_to_replace(destination: Path, protect: Iterable[str | Path] = ()) -> None:
    """Raise `ConversionError` unless `--overwrite` may replace the existing `destination`."""
    hint = "--overwrite replaces only an earlier output of 'ondevice convert' or an empty folder"
    if destination.is_symlink():
        raise ConversionError(f"{destination}: is a symbolic link; {hint}")
    if not destination.is_dir():
        raise ConversionError(f"{destination}: is a file, not an output of 'ondevice convert'; {hint}")
    resolved = destination.resolve()
    for source in protect:
        source = Path(source).expanduser().resolve()
        if resolved == source:
            raise ConversionError(f"{destination}: is the source checkpoint; an output never replaces its source "
                                  f"(choose another --out)")
        if _within(source, resolved):
            raise ConversionError(f"{destination}: contains the source checkpoint {source}; an output never "
                                  f"replaces its source (choose another --out)")
    if _within(Path.cwd().resolve(), resolved):
        raise ConversionError(f"{destination}: is the working directory or contains it; {hint}")
    entries = sorted(os.listdir(destination))
    if not entries:
        return
    marker = read_marker(destination)
    if marker is None:
        raise ConversionError(f"{destination}: holds {entries[0]!r}" + (f" and {len(entries) - 1} more" if
                              len(entries) > 1 else "") + f", not written by ondevice; {hint} (remove it yourself "
                              "or choose another --out)")
    ours = set(marker.get("entries") or ()) | {MARKER}
    foreign = [name for name in entries if name not in ours]
    if foreign:
        raise ConversionError(f"{destination}: holds {foreign[0]!r}, which ondevice did not write there; --overwrite "
                              "replaces an earlier output only while it holds nothing else (move it out or choose "
                              "another --out)")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: someone else's live process
        return True
    return True


def remove_stale_staging(destination: Path) -> list[Path]:
    """Remove the staging folders beside `destination` left by runs that were killed; return them.

    Ours are `.NAME.XXXX.partial/` folders: one recording a pid that no longer runs is stale; one recording
    none (written by an older version) only when it stages this very destination and is old."""
    removed = []
    try:
        candidates = [p for p in destination.parent.iterdir() if p.name.startswith(".") and
                      p.name.endswith(".partial") and p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for staging in candidates:
        try:
            stale = not _pid_alive(int((staging / OWNER).read_text().strip()))
        except FileNotFoundError:
            try:
                stale = (staging.name.startswith(f".{destination.name}.") and
                         time.time() - staging.stat().st_mtime > STALE_WITHOUT_OWNER_S)
            except OSError:
                stale = False
        except (OSError, ValueError):
            stale = False
        if stale:
            _remove(staging)
            removed.append(staging)
    return removed


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises `Terminated`, so `finally` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not settable here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output(destination: str | Path, overwrite: bool = False, protect: Iterable[str | Path] = (),
                  record: dict | None = None) -> Iterator[Path]:
    """Yield a temporary path (file or directory, the caller decides) that becomes `destination`.

    Refuses an existing destination unless `overwrite`, and with `overwrite` anything `refuse_to_replace`
    refuses (`protect`: the source checkpoint(s)). The old output is replaced only after the new one is
    complete. A directory output gets our marker (with `record`'s fields), so a later --overwrite knows it."""
    destination = Path(destination).expanduser()
    protect = list(protect)
    if destination.exists() or destination.is_symlink():
        if not overwrite:
            raise ConversionError(f"{destination}: already exists (pass --overwrite to replace it)")
        refuse_to_replace(destination, protect)
    if not destination.parent.is_dir():
        raise ConversionError(f"{destination.parent}: output directory does not exist")
    remove_stale_staging(destination)
    with terminate_as_interrupt():
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial",
                                            dir=destination.parent))
            (staging / OWNER).write_text(f"{os.getpid()}\n")
        except OSError as exc:
            raise ConversionError(f"{destination.parent}: cannot write here ({exc.strerror or exc})") from None
        work = staging / destination.name
        try:
            yield work
            if not work.exists():
                raise ConversionError(f"{destination}: nothing was written")
            if work.is_dir():
                _write_marker(work, record)
            if destination.exists() or destination.is_symlink():
                if not overwrite:  # it appeared while we were writing
                    raise ConversionError(f"{destination}: already exists (pass --overwrite to replace it)")
                refuse_to_replace(destination, protect)  # again: it may have changed while we were writing
                _remove(destination)
            os.replace(work, destination)
        finally:
            _remove(staging)
