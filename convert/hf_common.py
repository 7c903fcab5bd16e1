"""Checks shared by every Hugging Face dialect reader: the tensors a config implies, against the
tensors a checkpoint holds. One place produces the one-line messages for missing, extra and
mis-shaped tensors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from canonical.errors import CheckpointError
from convert.weights import RawWeights


def read_config_json(directory: Path) -> dict:
    import json

    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def config_int(config: dict, key: str, default: int | None = None, *, minimum: int = 1) -> int:
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"config.json: required field '{key}' is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(f"config.json: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_heads(hidden: int, heads: int, hidden_key: str, heads_key: str) -> None:
    if hidden % heads:
        raise CheckpointError(
            f"config.json: {hidden_key}={hidden} is not divisible by {heads_key}={heads}"
        )


class CheckpointTensors:
    """The checkpoint's tensors under dialect-neutral names (wrapper prefixes stripped)."""

    def __init__(self, raw: RawWeights, prefixes: Iterable[str], config_summary: str):
        self.raw = raw
        self.summary = config_summary
        self.tensors: dict[str, torch.Tensor] = {}
        self.original: dict[str, str] = {}
        for key, tensor in raw.tensors.items():
            name = _strip_prefix(key, prefixes)
            # Old TF-ported BERT checkpoints name layer-norm parameters gamma/beta.
            name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
            name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
            self.tensors[name] = tensor
            self.original[name] = key

    def where(self, name: str) -> str:
        return self.raw.where(self.original.get(name, name))

    def any_file(self) -> str:
        return next(iter(self.raw.origin.values()), "weights")

    def has(self, name: str) -> bool:
        return name in self.tensors

    def check(self, expected: dict[str, tuple[int, ...]], optional: set[str], ignored: Iterable[str]) -> None:
        """Raise on the first missing, unexpected or mis-shaped tensor."""
        ignore = [re.compile(pattern) for pattern in ignored]
        missing = [n for n in expected if n not in self.tensors and n not in optional]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{self.any_file()}: missing tensor '{missing[0]}'{more} for a model with {self.summary}"
            )
        extra = [n for n in self.tensors if n not in expected and not any(p.fullmatch(n) for p in ignore)]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise CheckpointError(
                f"{self.where(extra[0])}: unexpected tensor '{self.original[extra[0]]}'{more} "
                f"for a model with {self.summary}"
            )
        for name, shape in expected.items():
            tensor = self.tensors.get(name)
            if tensor is not None and tuple(tensor.shape) != shape:
                raise CheckpointError(
                    f"{self.where(name)}: tensor '{self.original[name]}' has shape {list(tensor.shape)}, "
                    f"but config.json ({self.summary}) implies {list(shape)}"
                )

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def _strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
