"""One entry point from a Hugging Face checkpoint to our canonical config and weights: the registry
(`registry.py`) picks the family from `config.json`'s `model_type`, and the family's reader does the rest.

A directory written by `ondevice convert --to mlx` is read too: it comes back as the `MLXCheckpoint` of
`convert/mlx_checkpoint.py` (weights in their exported dtype and quantization), which runs on the mlx backend."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from canonical.config import ModelConfig
from convert.hf_common import read_config_json
from convert.locate import expand_user, resolve_checkpoint
from convert.registry import family_for_model_type, family_of
from convert.weights import read_raw_weights

if TYPE_CHECKING:
    from convert.mlx_checkpoint import MLXCheckpoint

MLX_FORMAT_KEY = "ondevice_mlx"  # convert/mlx_checkpoint.FORMAT_KEY, read here without importing mlx


@dataclass
class Checkpoint:
    directory: Path
    model_type: str  # Hugging Face's name, e.g. gpt2, distilbert, qwen3 (the family is config.family)
    config: ModelConfig
    weights: dict[str, torch.Tensor]


def is_mlx_directory(directory: str | Path) -> bool:
    """Whether `directory` was written by `ondevice convert --to mlx` (reads config.json only, imports no mlx)."""
    path = expand_user(directory) / "config.json"
    try:
        return path.is_file() and MLX_FORMAT_KEY in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def mlx_source(directory: str | Path) -> Path | None:
    """The checkpoint an MLX directory was exported from, as recorded at export time, or None."""
    from convert.atomic import read_marker

    directory = expand_user(directory)
    marker = read_marker(directory) or {}
    source = marker.get("source")
    if not source:
        try:
            source = json.loads((directory / "config.json").read_text())[MLX_FORMAT_KEY].get("source_checkpoint")
        except (OSError, ValueError, AttributeError, KeyError):
            source = None
    return Path(source) if isinstance(source, str) and source else None


def read_model_config(directory: Path) -> tuple[str, ModelConfig]:
    """Parse config.json alone: cheap, and enough to reject an unknown architecture early."""
    raw = read_config_json(directory)
    model_type = raw.get("model_type")
    family = family_for_model_type(model_type, directory / "config.json")
    assert isinstance(model_type, str)  # one of the family's model_types
    return model_type, family.read_config(raw, model_type, directory)


def _read_raw(directory: Path):
    with warnings.catch_warnings():
        # torch's notice about the pickle protocol of a refused file: noise next to our one line
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return read_raw_weights(directory)


def load_checkpoint(spec: str | Path) -> Checkpoint | MLXCheckpoint:
    """Read a checkpoint directory, bundled name or cached model id into canonical form.

    An MLX directory written by `ondevice convert --to mlx` comes back as an `MLXCheckpoint` (it runs on the
    mlx backend only; `ondevice` refuses other backends for it in one line)."""
    directory = resolve_checkpoint(spec)
    if is_mlx_directory(directory):
        from convert.mlx_checkpoint import load_mlx_checkpoint

        return load_mlx_checkpoint(directory)
    model_type, config = read_model_config(directory)
    config, weights = family_of(config).read_weights(config, _read_raw(directory))
    return Checkpoint(directory=directory, model_type=model_type, config=config, weights=weights)
