"""One entry point from a Hugging Face checkpoint to our canonical config and weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from canonical.bert import BertConfig
from canonical.config import ModelConfig
from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config
from convert.hf_bert import bert_config, bert_weights
from convert.hf_common import read_config_json
from convert.hf_gpt2 import gpt2_config, gpt2_weights
from convert.locate import resolve_checkpoint
from convert.weights import read_raw_weights

SUPPORTED_MODEL_TYPES = ("gpt2", "bert", "distilbert")


@dataclass
class Checkpoint:
    directory: Path
    model_type: str  # Hugging Face's name: gpt2, bert, distilbert
    config: ModelConfig
    weights: dict[str, torch.Tensor]


def read_model_config(directory: Path) -> tuple[str, ModelConfig]:
    """Parse config.json alone: cheap, and enough to reject an unknown architecture early."""
    raw = read_config_json(directory)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{directory / 'config.json'}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if model_type == "gpt2":
        return model_type, gpt2_config(raw)
    return model_type, bert_config(raw, model_type, directory)


def load_checkpoint(spec: str | Path) -> Checkpoint:
    """Read a checkpoint directory, bundled name or cached model id into canonical form."""
    directory = resolve_checkpoint(spec)
    model_type, config = read_model_config(directory)
    raw = read_raw_weights(directory)
    if isinstance(config, GPT2Config):
        weights = gpt2_weights(config, raw)
    else:
        assert isinstance(config, BertConfig)
        config, weights = bert_weights(config, raw)
    return Checkpoint(directory=directory, model_type=model_type, config=config, weights=weights)
