"""What travels inside a package besides the model, as this package writes it and reads it back: the
`ondevice.*` metadata and the tokenizer files, so that an app or our runtime runs a package without the
original checkpoint.

Metadata sits in the model's `userDefined` metadata under keys `ondevice.*` (strings). Tokenizer files are
registered as items of the package (Manifest.json) and live under `Data/ondevice-transformers/tokenizer/`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from canonical.errors import ConversionError

AUTHOR = "ondevice-transformers"
TOKENIZER_DIR = Path("Data") / AUTHOR / "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
FORMAT_VERSION = "1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def root_model_path(package: Path) -> Path:
    """The spec file (model.mlmodel) inside a package, from its Manifest.json."""
    manifest = package / "Manifest.json"
    try:
        data = json.loads(manifest.read_text())
        root = data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(
            f"{package}: not a readable Core ML package ({type(exc).__name__} in Manifest.json)"
        ) from None
    return package / "Data" / root


def weights_path(package: Path) -> Path:
    return root_model_path(package).parent / "weights" / "weight.bin"


def read_metadata(package: Path) -> dict[str, str]:
    """The `ondevice.*` metadata of a package written by `convert_to_coreml`, keys without the prefix."""
    import coremltools as ct
    from google.protobuf.message import DecodeError

    spec = ct.proto.Model_pb2.Model()
    try:
        spec.ParseFromString(root_model_path(package).read_bytes())
    except (OSError, ValueError, DecodeError) as exc:
        raise ConversionError(f"{package}: cannot read the model spec ({exc})") from None
    meta = {
        k.removeprefix("ondevice."): v
        for k, v in spec.description.metadata.userDefined.items()
        if k.startswith("ondevice.")
    }
    if "architecture" not in meta:
        raise ConversionError(f"{package}: no ondevice metadata (not written by 'ondevice convert --to coreml')")
    return meta
