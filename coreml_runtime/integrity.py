"""A package is what conversion wrote, or it is refused: conversion records the sha256 of the weight file in the
package's metadata (`ondevice.weights_sha256`, `convert/coreml_package.py`), and `inspect` and `verify` compare
it with the file on disk before anything else, so that an altered or damaged weight.bin is named instead of
being inspected as fine or run into NaN logits."""

from __future__ import annotations

from pathlib import Path

from canonical.errors import ConversionError
from coreml_runtime.chunked import MANIFEST, is_chunked_model, read_chunked_model
from coreml_runtime.package import read_metadata, sha256_file, weights_path


def check_package_weights(package: str | Path) -> str | None:
    """Raise `ConversionError` naming the weight file unless its sha256 is the one recorded at conversion.
    Returns the digest checked, or None for a package that records none. A chunked model's parts are checked
    against its manifest, and the manifest's own digest is returned."""
    package = Path(package)
    if is_chunked_model(package):  # every part against the manifest's sha256s
        read_chunked_model(package, check_weights=True)
        return sha256_file(package / MANIFEST)
    if not package.is_dir():
        raise ConversionError(f"{package}: no such Core ML package")
    recorded = read_metadata(package).get("weights_sha256", "")
    weights = weights_path(package)
    if not recorded:  # written before conversions recorded it: nothing to check against
        return None
    if not weights.is_file():
        raise ConversionError(f"{weights}: missing, though the package records weights of sha256 {recorded[:16]}…")
    actual = sha256_file(weights)
    if actual != recorded:
        raise ConversionError(
            f"{weights}: sha256 {actual[:16]}… differs from the {recorded[:16]}… recorded at "
            "conversion: the weights were altered or damaged since; convert again"
        )
    return actual
