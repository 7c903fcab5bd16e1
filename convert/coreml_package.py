"""What travels inside a package besides the model: metadata and tokenizer files, and reading them
back, so an app or this package runs it without the original checkpoint.

Metadata sits in the model's `userDefined` metadata under keys `ondevice.*` (strings). Tokenizer
files are registered as items of the package (Manifest.json) and live under
`Data/ondevice-transformers/tokenizer/` inside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from canonical.errors import ConversionError

AUTHOR = "ondevice-transformers"
TOKENIZER_DIR = Path("Data") / AUTHOR / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json")
FORMAT_VERSION = "1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_weights_sha256(directory: Path) -> str:
    files = sorted(p for pattern in ("*.safetensors", "pytorch_model*.bin") for p in directory.glob(pattern))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest() if files else ""


def root_model_path(package: Path) -> Path:
    """The spec file (model.mlmodel) inside a package, from its Manifest.json."""
    manifest = package / "Manifest.json"
    try:
        data = json.loads(manifest.read_text())
        root = data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"{package}: not a readable Core ML package ({type(exc).__name__} in Manifest.json)") \
            from None
    return package / "Data" / root


def weights_path(package: Path) -> Path:
    return root_model_path(package).parent / "weights" / "weight.bin"


def write_package_extras(package: Path, ckpt, plan, interface: dict) -> None:
    """Add tokenizer files and the `ondevice.*` metadata to a freshly saved package."""
    import coremltools as ct
    from coremltools.libmodelpackage import ModelPackage

    from convert.coreml import config_json, describe_plan

    tokenizer = [name for name in TOKENIZER_FILES if (ckpt.directory / name).is_file()]
    pkg = ModelPackage(str(package))
    for name in tokenizer:
        pkg.addItem(str(ckpt.directory / name), f"tokenizer/{name}", AUTHOR, "tokenizer file of the source checkpoint")
    spec_path = root_model_path(package)
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    meta = spec.description.metadata
    meta.author = AUTHOR
    meta.shortDescription = f"{ckpt.model_type} converted for the Apple Neural Engine"
    weights = weights_path(package)
    fields = {
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.model_type,
        "config": config_json(ckpt.config),
        "source_checkpoint": str(ckpt.directory),
        "source_weights_sha256": _source_weights_sha256(ckpt.directory),
        "weights_sha256": sha256_file(weights) if weights.is_file() else "",
        **describe_plan(plan),
        "interface": json.dumps(interface),
        "tokenizer_files": json.dumps([str(TOKENIZER_DIR / n) for n in tokenizer]),
    }
    for key, value in fields.items():
        meta.userDefined[f"ondevice.{key}"] = value
    spec_path.write_bytes(spec.SerializeToString())


def read_metadata(package: Path) -> dict[str, str]:
    """The `ondevice.*` metadata of a package written by `convert_to_coreml`, keys without the prefix."""
    import coremltools as ct
    from google.protobuf.message import DecodeError

    spec = ct.proto.Model_pb2.Model()
    try:
        spec.ParseFromString(root_model_path(package).read_bytes())
    except (OSError, ValueError, DecodeError) as exc:
        raise ConversionError(f"{package}: cannot read the model spec ({exc})") from None
    meta = {k.removeprefix("ondevice."): v for k, v in spec.description.metadata.userDefined.items()
            if k.startswith("ondevice.")}
    if "architecture" not in meta:
        raise ConversionError(f"{package}: no ondevice metadata (not written by 'ondevice convert --to coreml')")
    return meta
