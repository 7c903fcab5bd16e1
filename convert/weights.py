"""Read the raw tensors of a Hugging Face checkpoint directory, whatever file layout it uses.

Safetensors first (single file or sharded with its index); `pytorch_model.bin` only through
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from canonical.errors import CheckpointError

_LAYOUTS = (
    ("model.safetensors.index.json", "safetensors"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin"),
    ("pytorch_model.bin", "bin"),
)


@dataclass
class RawWeights:
    """Tensors by their checkpoint key, and the file each came from (for error messages)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        return self.origin.get(key, "weights")


def read_raw_weights(directory: Path) -> RawWeights:
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file() and index.is_file():
        # transformers reads the single file, and a reader of the index the shards: which one is current is the
        # user's to say, never ours to guess (a verify would compare two different models).
        raise CheckpointError(
            f"{directory}: holds both model.safetensors and model.safetensors.index.json (with its "
            "shards), two sets of weights; remove the one that is stale"
        )
    for name, kind in _LAYOUTS:
        path = directory / name
        if not path.is_file():
            continue
        files = _shard_files(path) if name.endswith(".index.json") else [path]
        raw = RawWeights()
        for file in files:
            tensors = _read_safetensors(file) if kind == "safetensors" else _read_torch_bin(file)
            for key, tensor in tensors.items():
                raw.tensors[key] = tensor
                raw.origin[key] = file.name
        return raw
    expected = ", ".join(name for name, _ in _LAYOUTS)
    raise CheckpointError(f"{directory}: no weights found (expected one of {expected})")


def _shard_files(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index ({exc})") from exc
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        path = index_path.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index_path}: names shard '{shard}', which does not exist")
        files.append(path)
    return files


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error type for truncated or corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors, refused pickles, truncation
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({_why_unreadable(path, exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a flat dictionary of tensors")
    return state


def _pickle_of(path: Path) -> bytes:
    """The pickle inside a torch.save file (a zip archive holding `*/data.pkl`), or the file itself (the legacy
    format, or anything else)."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                return archive.read(name) if name is not None else b""
        except (zipfile.BadZipFile, OSError, EOFError):
            return b""
    return path.read_bytes()


# Objects a torch.save of tensors pickles; anything else is code the safe loader refuses to run.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")


def _why_unreadable(path: Path, exc: Exception) -> str:
    """What torch's safe loader refused, told apart without running anything (pickletools only reads opcodes):
    damaged or random bytes, pickled objects other than tensors (which could run code), or pickle features the
    safe loader does not take."""
    import pickletools

    if "Weights only load failed" not in str(exc):
        return _first_line(exc)
    globals_, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(_pickle_of(path)):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif opcode.name == "GLOBAL":
                globals_.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                globals_.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle: random, truncated or damaged bytes
        return "damaged, truncated or not a PyTorch file at all: no pickle of tensors in it"
    foreign = [g for g in globals_ if not g.startswith(_TENSOR_GLOBALS)]
    if foreign:
        return (
            f"it holds pickled objects other than tensors ({foreign[0]}), refused because loading them could run "
            "code; use a safetensors checkpoint"
        )
    return "it uses pickle features that the safe loader does not take; use a safetensors checkpoint"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
