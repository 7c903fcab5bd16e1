"""Write outputs so that a failure or an interrupt leaves nothing half-written: build under a
temporary name beside the destination, rename on success, remove on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from canonical.errors import ConversionError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(destination: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path (file or directory, the caller decides) that becomes `destination`.

    Refuses an existing destination unless `overwrite`; the old output is replaced only after the
    new one is complete."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise ConversionError(f"{destination}: already exists (pass --overwrite to replace it)")
    if not destination.parent.is_dir():
        raise ConversionError(f"{destination.parent}: output directory does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    work = staging / destination.name
    try:
        yield work
        if not work.exists():
            raise ConversionError(f"{destination}: nothing was written")
        if destination.exists():
            _remove(destination)
        os.replace(work, destination)
    finally:
        _remove(staging)
