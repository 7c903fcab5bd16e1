"""A chunked Core ML model, as `convert/coreml_chunks.py` writes it and every command reads it: a folder of packages
and the manifest that chains them.

    MODEL/
      chunked-model.json          the manifest (below)
      embed_head.mlpackage        functions embed_prefill, embed_decode, head_prefill, head_decode
      layers_0.mlpackage ...      functions prefill, decode; state: its own layers' KV cache
      tokenizer/                  the source checkpoint's tokenizer files (chat template included)
      config.json                 the source checkpoint's config

The token table and the head share one package, so a tied table is one constant, stored once. Each part of layers
keeps the KV cache of its own layers as Core ML state, so an app makes one MLState per part: a state belongs to the
model that made it, and a part's cache holds only its layers (no part carries the others' slots, and a part's
compiled size stays its own). One token's step runs the manifest's `chain` for its function (prefill or decode):
the embed function, every part of layers in order, the head; each step's HIDDEN_OUT is the next one's HIDDEN_IN,
and every step takes the same `position`.

Each part records the model's id, its index and its layers in its own metadata, and the manifest records each
part's weight sha256: a part missing, a part of another model, a reordered list or an altered part is refused in
one line before anything runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from canonical.errors import ConversionError
from coreml_runtime.package import TOKENIZER_DIR, read_metadata, sha256_file, weights_path

MANIFEST = "chunked-model.json"
FORMAT = "ondevice-chunked-coreml"
FORMAT_VERSION = 1
TOKENIZER_FOLDER = "tokenizer"
EMBED_HEAD = "embed_head"
LAYERS = "layers"


@dataclass(frozen=True)
class Part:
    path: Path
    role: str  # EMBED_HEAD or LAYERS
    layers: tuple[int, int]  # [start, stop) of the decoder's blocks; (0, 0) for the embed/head part
    weights_sha256: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ChunkedModel:
    directory: Path
    manifest: dict
    parts: list[Part]

    @property
    def metadata(self) -> dict[str, str]:
        """What a single package's metadata says (architecture, config, context, ...), from the manifest."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.manifest["model"].items()}

    def chain(self, function: str) -> list[tuple[int, str]]:
        """(part index, function name) in the order one step of `function` ("prefill" or "decode") runs them."""
        return [(step["part"], step["function"]) for step in self.manifest["chain"][function]]

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_FOLDER


def is_chunked_model(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def is_coreml_model(spec: str | Path) -> bool:
    """A Core ML package (PATH.mlpackage) or a chunked model's folder."""
    return str(spec).rstrip("/").endswith(".mlpackage") or is_chunked_model(spec)


def tokenizer_dir(model: str | Path) -> Path:
    """Where a Core ML model's tokenizer files are: inside a package, or beside a chunked model's parts."""
    model = Path(model)
    return model / TOKENIZER_FOLDER if is_chunked_model(model) else model / TOKENIZER_DIR


def _refuse(directory: Path, why: str) -> ConversionError:
    return ConversionError(f"{directory / MANIFEST}: {why}")


def read_chunked_model(directory: str | Path, check_weights: bool = True) -> ChunkedModel:
    """The chunked model in `directory`, checked: every part present, of this model (its id), in its recorded place,
    its layers following the previous part's, and (with `check_weights`) its weights those written at conversion."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        listed, model_id = manifest["parts"], manifest["model_id"]
        if manifest.get("format") != FORMAT:
            raise _refuse(directory, f"not a chunked model's manifest (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise _refuse(directory, f"format version {manifest.get('format_version')!r}; this reads {FORMAT_VERSION}")
        entries = [(str(p["file"]), str(p["role"]), tuple(p["layers"]), str(p["weights_sha256"])) for p in listed]
        manifest["chain"]["prefill"], manifest["chain"]["decode"], manifest["model"]["config"]
    except FileNotFoundError:
        why = f"no {MANIFEST} (not a chunked model written by 'ondevice convert')"
        raise ConversionError(f"{directory}: {why}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _refuse(directory, f"unreadable ({type(exc).__name__}: {exc})") from None
    parts, next_layer = [], 0
    for index, (file, role, layers, recorded) in enumerate(entries):
        path = directory / file
        if Path(file).name != file or not path.is_dir():
            raise _refuse(directory, f"part {index} ({file}) is missing")
        meta = read_metadata(path)
        if meta.get("model_id") != model_id:
            raise _refuse(directory, f"part {index} ({file}) belongs to another model (id {meta.get('model_id')})")
        if meta.get("part_index") != str(index):
            written = meta.get("part_index")
            raise _refuse(directory, f"part {file} is listed at {index} but was written as part {written}")
        if role == LAYERS:
            if len(layers) != 2 or layers[0] != next_layer or layers[1] <= layers[0]:
                raise _refuse(directory, f"part {index} ({file}) holds layers {list(layers)}, not from {next_layer} on")
            next_layer = layers[1]
        elif role != EMBED_HEAD:
            raise _refuse(directory, f"part {index} ({file}) has an unknown role {role!r}")
        if check_weights:
            weights = weights_path(path)
            actual = sha256_file(weights) if weights.is_file() else "missing"
            if actual != recorded:
                raise ConversionError(
                    f"{weights}: sha256 {actual[:16]}… differs from the {recorded[:16]}… recorded at conversion: "
                    "the part was altered or damaged since; convert again"
                )
        parts.append(Part(path, role, (layers[0], layers[1]) if role == LAYERS else (0, 0), recorded, meta))
    num_layers = json.loads(manifest["model"]["config"]).get("num_layers")
    if next_layer != num_layers or sum(p.role == EMBED_HEAD for p in parts) != 1:
        raise _refuse(directory, f"its parts hold layers 0..{next_layer} of {num_layers} (a part is missing)")
    return ChunkedModel(directory, manifest, parts)
