"""Checks shared by every Hugging Face dialect reader: config.json's values (each number finite and within what
this package can address and allocate, each flag a boolean, each token id an id), and the tensors a config
implies against the tensors a checkpoint holds (missing, extra, mis-shaped, NaN or inf). One place produces
their one-line messages."""

from __future__ import annotations

import math
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


def read_generation_config(directory: Path) -> dict:
    """generation_config.json beside the weights (more end-of-sequence ids: Llama 3's, Gemma's `<end_of_turn>`), or
    an empty dict where there is none."""
    import json

    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        generation = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(generation, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return generation


# The largest count (positions, vocabulary, width, layers) a config may state: positions are int32 in a package
# and float32 in RoPE's angles (exact up to 2^24), and every table this package builds is sized by such counts.
MAX_COUNT = 1 << 24


def config_int(
    config: dict,
    key: str,
    default: int | None = None,
    *,
    minimum: int = 1,
    field: str | None = None,
    file: str = "config.json",
) -> int:
    """An integer field (`field`: its name in messages, when it sits inside a nested object)."""
    field = field or key
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"{file}: required field '{field}' is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(f"{file}: '{field}' must be an integer >= {minimum}, got {value!r}")
    if value > MAX_COUNT:
        raise CheckpointError(f"{file}: '{field}' is {value:,}, beyond the {MAX_COUNT:,} this package can address")
    return value


def config_float(
    config: dict, key: str, default: float | None = None, *, field: str | None = None, maximum: float | None = None
) -> float:
    """A finite number above 0 (and at most `maximum`): JSON's `Infinity` and `NaN` parse as floats, and a norm's
    epsilon of infinity or a RoPE base of zero would make every output the same."""
    field = field or key
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"config.json: required field '{field}' is missing")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or not value > 0:
        raise CheckpointError(f"config.json: '{field}' must be a finite number > 0, got {value!r}")
    if maximum is not None and value > maximum:
        raise CheckpointError(
            f"config.json: '{field}' is {value!r}, above {maximum:g}, where it would swamp what it is added to"
        )
    return float(value)


# Norm epsilons are added to a variance of order 1; beyond this they flatten every activation.
MAX_NORM_EPS = 1.0


def norm_eps(config: dict, key: str, default: float) -> float:
    """A norm's epsilon: a finite number in (0, MAX_NORM_EPS]."""
    return config_float(config, key, default, maximum=MAX_NORM_EPS)


def config_bool(config: dict, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: '{key}' must be true or false, got {value!r}")
    return value


def token_ids(value: object, file: str, key: str) -> list[int]:
    """A token id or a list of them (null: none)."""
    values = [] if value is None else value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT:
            raise CheckpointError(f"{file}: '{key}' must be a token id or a list of them, got {value!r}")
    return list(values)


def token_id(config: dict, key: str, default: int | None = None, file: str = "config.json") -> int | None:
    """One token id, or None; a list (as some configs give) counts by its first."""
    ids = token_ids(config.get(key, default), file, key)
    return ids[0] if ids else None


def check_heads(hidden: int, heads: int, hidden_key: str, heads_key: str) -> None:
    if hidden % heads:
        raise CheckpointError(f"config.json: {hidden_key}={hidden} is not divisible by {heads_key}={heads}")


class CheckpointTensors:
    """The checkpoint's tensors under dialect-neutral names (wrapper prefixes stripped), read when asked for."""

    def __init__(self, raw: RawWeights, prefixes: Iterable[str], config_summary: str):
        self.raw = raw
        self.summary = config_summary
        self.keys: dict[str, str] = {}  # name -> the checkpoint's key
        self.original = self.keys
        for key in raw.tensors:
            name = _strip_prefix(key, prefixes)
            # Old TF-ported BERT checkpoints name layer-norm parameters gamma/beta.
            name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
            name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
            self.keys[name] = key

    def where(self, name: str) -> str:
        return self.raw.where(self.keys.get(name, name))

    def any_file(self) -> str:
        return next(iter(self.raw.origin.values()), "weights")

    def has(self, name: str) -> bool:
        return name in self.keys

    def shape(self, name: str) -> tuple[int, ...]:
        return self.raw.tensors.shapes[self.keys[name]]

    def dtype(self, name: str) -> torch.dtype:
        return self.raw.tensors.dtypes[self.keys[name]]

    def check(self, expected: dict[str, tuple[int, ...]], optional: set[str], ignored: Iterable[str]) -> None:
        """Raise on the first missing, unexpected or mis-shaped tensor (from the files' headers), then on the first
        holding NaN or inf (each tensor read once, and let go)."""
        ignore = [re.compile(pattern) for pattern in ignored]
        missing = [n for n in expected if n not in self.keys and n not in optional]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{self.any_file()}: missing tensor '{missing[0]}'{more} for a model with {self.summary}"
            )
        extra = [n for n in self.keys if n not in expected and not any(p.fullmatch(n) for p in ignore)]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise CheckpointError(
                f"{self.where(extra[0])}: unexpected tensor '{self.keys[extra[0]]}'{more} "
                f"for a model with {self.summary}"
            )
        for name, shape in expected.items():
            if name in self.keys and self.shape(name) != shape:
                raise CheckpointError(
                    f"{self.where(name)}: tensor '{self.keys[name]}' has shape {list(self.shape(name))}, "
                    f"but config.json ({self.summary}) implies {list(shape)}"
                )
        for name in expected:
            if name not in self.keys or not self.dtype(name).is_floating_point:
                continue
            tensor = self[name]
            if not _all_finite(tensor):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(
                    f"{self.where(name)}: tensor '{self.keys[name]}' holds {bad:,} NaN or inf "
                    "values: the checkpoint is damaged"
                )

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.raw.tensors[self.keys[name]]


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in `tensor`. For fp32/fp16/bf16 values the float64 sum is finite exactly then (fp32's largest
    value times any tensor's size is far inside float64's range), at a third of `isfinite`'s cost; a float64 tensor
    whose sum overflows gets the full check."""
    return bool(torch.isfinite(tensor.sum(dtype=torch.float64))) or bool(torch.isfinite(tensor).all())


def _strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
