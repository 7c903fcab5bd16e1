"""Write outputs so that nothing is lost and nothing is left half-written.

Every output is built under a temporary name beside its destination (`.NAME.XXXX.partial/`), renamed on
success and removed on failure, on Ctrl-C and on SIGTERM. Each staging folder carries our owner file (OWNER:
who wrote it, and the writing process's pid); a later write into the same folder removes the staging folders
whose writer no longer runs (killed outright: SIGKILL, power loss), and never a folder without that file.

`--overwrite` replaces only what this package wrote earlier: a folder holding our marker file (MARKER), which
lists every file and folder we wrote there, each file with its size (and sha256, for files up to HASHED_BYTES),
and nothing else, nothing changed; or an empty folder. Never a file, a symbolic link, the source checkpoint or
a folder holding it, the working directory or one above it, a folder with anything else in it at any depth, or
a file we wrote that has changed since: those are refused in one line, and the destination is left as it was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from canonical.errors import ConversionError
from convert.locate import expand_user

MARKER = ".ondevice-output.json"  # in every output folder we write: {"written_by", "files", "folders", ...}
WRITTEN_BY = "ondevice-transformers"
OWNER = ".ondevice-staging.json"  # in a staging folder: {"written_by": WRITTEN_BY, "pid": the writer's pid}
HASHED_BYTES = 64 << 20  # files up to this size are recorded with their sha256; larger ones (weights) by size


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


def _tree(directory: Path) -> tuple[dict[str, Path], list[str], list[str]]:
    """(files by relative path, folders, symbolic links) under `directory`, links not followed, MARKER excluded."""
    files, folders, links = {}, [], []
    for root, dirs, names in os.walk(directory):
        base = Path(root)
        for name in [*dirs, *names]:
            path = base / name
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink():
                links.append(relative)
            elif path.is_dir():
                folders.append(relative)
            elif relative != MARKER:
                files[relative] = path
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return files, sorted(folders), sorted(links)


def _fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    if size > HASHED_BYTES:
        return {"size": size}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": size, "sha256": digest.hexdigest()}


def _write_marker(directory: Path, record: dict | None) -> None:
    files, folders, _ = _tree(directory)
    marker = {
        **(read_marker(directory) or {}),
        **(record or {}),
        "written_by": WRITTEN_BY,
        "files": {name: _fingerprint(path) for name, path in sorted(files.items())},
        "folders": folders,
    }
    marker.pop("entries", None)  # the top-level names that markers of earlier versions listed
    (directory / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _never_replaced(destination: Path, protect: Iterable[str | Path], hint: str) -> None:
    """Raise for what no option replaces: a link, a file, the source checkpoint or a folder holding it, the
    working directory or a folder holding it."""
    if destination.is_symlink():
        raise ConversionError(f"{destination}: is a symbolic link; {hint}")
    if not destination.is_dir():
        raise ConversionError(f"{destination}: is a file, not an output of 'ondevice convert'; {hint}")
    resolved = destination.resolve()
    for source in protect:
        source = expand_user(source).resolve()
        if resolved == source:
            raise ConversionError(
                f"{destination}: is the source checkpoint; an output never replaces its source (choose another --out)"
            )
        if _within(source, resolved):
            raise ConversionError(
                f"{destination}: contains the source checkpoint {source}; an output never "
                f"replaces its source (choose another --out)"
            )
    if _within(Path.cwd().resolve(), resolved):
        raise ConversionError(f"{destination}: is the working directory or contains it; {hint}")


def refuse_to_replace(destination: Path, protect: Iterable[str | Path] = ()) -> None:
    """Raise `ConversionError` unless `--overwrite` may replace the existing `destination`."""
    hint = "--overwrite replaces only an earlier output of 'ondevice convert' or an empty folder"
    _never_replaced(destination, protect, hint)
    entries = sorted(os.listdir(destination))
    if not entries:
        return
    marker = read_marker(destination)
    if marker is None:
        raise ConversionError(
            f"{destination}: holds {entries[0]!r}"
            + (f" and {len(entries) - 1} more" if len(entries) > 1 else "")
            + f", not written by ondevice; {hint} (remove it yourself "
            "or choose another --out)"
        )
    recorded = marker.get("files")
    if not isinstance(recorded, dict):
        raise ConversionError(
            f"{destination}: written by an earlier version of ondevice that did not record the "
            "files it wrote, so --overwrite cannot tell them from yours (remove it yourself or "
            "choose another --out)"
        )
    keep = (
        "--overwrite replaces an earlier output only while it holds nothing else (move it out or choose another --out)"
    )
    files, folders, links = _tree(destination)
    ours_folders = set(marker.get("folders") or ())
    # files first: a folder of the user's is named by what is in it, where anything is
    foreign = [*sorted(f for f in files if f not in recorded), *(d for d in folders if d not in ours_folders), *links]
    if foreign:
        raise ConversionError(f"{destination}: holds {foreign[0]!r}, which ondevice did not write there; {keep}")
    for name, path in sorted(files.items()):
        was = recorded[name]
        now = _fingerprint(path) if "sha256" in was else {"size": path.stat().st_size}
        if now != was:
            raise ConversionError(f"{destination}: {name!r} has changed since ondevice wrote it; {keep}")


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


def _staging_owner(staging: Path) -> int | None:
    """The pid recorded in our owner file in `staging`, or None where there is no such file of ours."""
    try:
        owner = json.loads((staging / OWNER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or owner.get("written_by") != WRITTEN_BY:
        return None
    pid = owner.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def remove_stale_staging(destination: Path) -> list[Path]:
    """Remove the staging folders beside `destination` left by runs that were killed; return them.

    Ours are `.NAME.XXXX.partial/` folders holding our owner file; one whose writer no longer runs is stale.
    A folder without that file is never touched, whatever its name and age: it may be a user's."""
    removed: list[Path] = []
    try:
        candidates = [
            p
            for p in destination.parent.iterdir()
            if p.name.startswith(".") and p.name.endswith(".partial") and p.is_dir() and not p.is_symlink()
        ]
    except OSError:
        return removed
    for staging in candidates:
        pid = _staging_owner(staging)
        if pid is not None and not _pid_alive(pid):
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


def _refuse_existing(destination: Path, protect: list) -> None:
    """An existing destination without --overwrite: say why --overwrite would not replace it either, where that is
    so, rather than suggesting it."""
    refuse_to_replace(destination, protect)
    raise ConversionError(f"{destination}: already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_output(
    destination: str | Path, overwrite: bool = False, protect: Iterable[str | Path] = (), record: dict | None = None
) -> Iterator[Path]:
    """Yield a temporary path (file or directory, the caller decides) that becomes `destination`.

    Refuses an existing destination unless `overwrite`, and with `overwrite` anything `refuse_to_replace`
    refuses (`protect`: the source checkpoint(s)). The old output is replaced only after the new one is
    complete. A directory output gets our marker (with `record`'s fields), so a later --overwrite knows it."""
    destination = expand_user(destination)
    if not str(destination).strip():
        raise ConversionError("the output path is empty")
    protect = list(protect)
    if destination.exists() or destination.is_symlink():
        if not overwrite:
            _refuse_existing(destination, protect)
        refuse_to_replace(destination, protect)
    if not destination.parent.is_dir():
        raise ConversionError(f"{destination.parent}: output directory does not exist")
    remove_stale_staging(destination)
    with terminate_as_interrupt():
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
            (staging / OWNER).write_text(json.dumps({"written_by": WRITTEN_BY, "pid": os.getpid()}) + "\n")
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
                    _refuse_existing(destination, protect)
                refuse_to_replace(destination, protect)  # again: it may have changed while we were writing
                _remove(destination)
            os.replace(work, destination)
        finally:
            _remove(staging)
