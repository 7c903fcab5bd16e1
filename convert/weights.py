"""Read the raw tensors of a Hugging Face checkpoint directory, whatever file layout it uses.

Safetensors first (single file or sharded with its index), each tensor read when asked for (so that a conversion
holds one part of a large model at a time); `pytorch_model.bin` only through `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
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


class TensorFiles(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors by key, read from their file each time one is asked for, and kept by no one here:
    safetensors files are opened for each read (`safe_open`), so no mapping of the file stays resident after it.
    Shapes and dtypes come from the files' headers without reading any tensor. `torch.load` files (the legacy
    format) are read whole, once."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.loaded: dict[str, torch.Tensor] = {}  # torch.load files: already in memory

    def add_safetensors(self, path: Path) -> list[str]:
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
                for key in keys:
                    piece = f.get_slice(key)
                    self.files[key], self.shapes[key] = path, tuple(piece.get_shape())
                    self.dtypes[key] = _SAFETENSORS_DTYPES.get(piece.get_dtype(), torch.uint8)
        except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
        return keys

    def add_loaded(self, path: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
        for key, tensor in tensors.items():
            self.files[key], self.shapes[key], self.dtypes[key] = path, tuple(tensor.shape), tensor.dtype
            self.loaded[key] = tensor
        return list(tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.loaded:
            return self.loaded[key]
        path = self.files[key]
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"{path}: tensor '{key}' cannot be read ({_first_line(exc)})") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


# safetensors' dtype names (the header's) -> torch dtypes
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


@dataclass
class RawWeights:
    """Tensors by their checkpoint key (read when asked for), and the file each came from (for error messages)."""

    tensors: TensorFiles = field(default_factory=TensorFiles)
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
            keys = (
                raw.tensors.add_safetensors(file)
                if kind == "safetensors"
                else raw.tensors.add_loaded(file, _read_torch_bin(file))
            )
            raw.origin |= dict.fromkeys(keys, file.name)
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
