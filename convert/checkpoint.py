"""One entry point from a Hugging Face checkpoint to our canonical config and weights: the registry
(`registry.py`) picks the family from `config.json`'s `model_type`, and the family's reader does the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from canonical.config import ModelConfig
from convert.hf_common import read_config_json
from convert.locate import resolve_checkpoint
from convert.registry import family_for_model_type, family_of
from convert.weights import read_raw_weights


@dataclass
class Checkpoint:
    directory: Path
    model_type: str  # Hugging Face's name, e.g. gpt2, distilbert, qwen3 (the family is config.family)
    config: ModelConfig
    weights: dict[str, torch.Tensor]


def read_model_config(directory: Path) -> tuple[str, ModelConfig]:
    """Parse config.json alone: cheap, and enough to reject an unknown architecture early."""
    raw = read_config_json(directory)
    model_type = raw.get("model_type")
    family = family_for_model_type(model_type, directory / "config.json")
    return model_type, family.read_config(raw, model_type, directory)


def load_checkpoint(spec: str | Path) -> Checkpoint:
    """Read a checkpoint directory, bundled name or cached model id into canonical form."""
    directory = resolve_checkpoint(spec)
    model_type, config = read_model_config(directory)
    config, weights = family_of(config).read_weights(config, read_raw_weights(directory))
    return Checkpoint(directory=directory, model_type=model_type, config=config, weights=weights)
