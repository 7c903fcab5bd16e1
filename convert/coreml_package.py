"""Write what travels inside a package besides the model: the tokenizer files of the source checkpoint and
the `ondevice.*` metadata (format in `coreml_runtime/package.py`, which reads them back)."""

from __future__ import annotations

import json
from pathlib import Path

from canonical.config import config_to_json
from coreml_runtime.package import (
    AUTHOR,
    FORMAT_VERSION,
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    root_model_path,
    sha256_file,
    weights_path,
)


def source_weights_sha256(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the source checkpoint's weight files: each value is what `sha256sum FILE` prints,
    so a user can check a package against the checkpoint it claims to come from."""
    files = sorted(p for pattern in ("*.safetensors", "pytorch_model*.bin") for p in directory.glob(pattern))
    return {path.name: sha256_file(path) for path in files}


def plan_metadata(plan) -> dict[str, str]:
    """The conversion options as recorded in the package metadata (strings, as Core ML metadata requires)."""
    opts = plan.options
    return {
        "seq_lens": ",".join(map(str, plan.seq_lens)),
        "context": "" if plan.context is None else str(plan.context),
        "precision": opts.dtype,
        "compression": opts.compress,
        "calibration": "none" if opts.calibration_text is None else f"gptq:{Path(opts.calibration_text).name}",
        "kv_cache": plan.kv_cache or "none",
        "deployment_target": opts.target,
        "functions": "prefill,decode" if plan.multifunction else "main",
    }


def write_package_extras(package: Path, ckpt, plan, interface: dict) -> None:
    """Add tokenizer files and the `ondevice.*` metadata to a freshly saved package."""
    from coremltools.libmodelpackage import ModelPackage

    tokenizer = [name for name in TOKENIZER_FILES if (ckpt.directory / name).is_file()]
    pkg = ModelPackage(str(package))
    for name in tokenizer:
        pkg.addItem(str(ckpt.directory / name), f"tokenizer/{name}", AUTHOR, "tokenizer file of the source checkpoint")
    weights = weights_path(package)
    fields = {
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.model_type,
        "config": config_to_json(ckpt.config),
        "source_checkpoint": str(ckpt.directory),
        "source_weights_sha256": json.dumps(source_weights_sha256(ckpt.directory)),
        "weights_sha256": sha256_file(weights) if weights.is_file() else "",
        **plan_metadata(plan),
        "interface": json.dumps(interface),
        "tokenizer_files": json.dumps([str(TOKENIZER_DIR / n) for n in tokenizer]),
    }
    write_metadata(package, ckpt, fields, f"{ckpt.model_type} converted for the Apple Neural Engine")


def write_metadata(package: Path, ckpt, fields: dict[str, str], description: str) -> None:
    """Write `fields` as the package's `ondevice.*` metadata (strings), with our author and `description`."""
    import coremltools as ct

    spec_path = root_model_path(package)
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    meta = spec.description.metadata
    meta.author = AUTHOR
    meta.shortDescription = description
    for key, value in fields.items():
        meta.userDefined[f"ondevice.{key}"] = value
    spec_path.write_bytes(spec.SerializeToString())
