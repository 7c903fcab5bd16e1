"""Exported MLX directories: their on-disk format, and reading one back into canonical form.

An MLX directory holds
    config.json         the source's Hugging Face config, plus `quantization` (mlx-lm's key, when
                        quantized) and `ondevice_mlx` (our canonical config, dtype, weight naming)
    model.safetensors   MLX weights: quantized layers as `.weight` (packed uint32), `.scales`, `.biases`
    tokenizer files     copied from the source, so tokenizers load from this directory alone

Weight names: families that mlx-lm runs are written under mlx-lm's names (the registry's `mlx_lm` entry,
e.g. `convert/mlx_lm_gpt2.py`), so `mlx_lm.load(dir)` runs them; other families under our canonical names.
Like every name from outside, mlx-lm's stay here in `convert/`: models only ever see canonical names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from canonical.config import ModelConfig, config_from_dict
from canonical.errors import CheckpointError
from convert.registry import mlx_lm_of

FORMAT_KEY = "ondevice_mlx"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
# `names` in the format entry: "mlx-lm" (the family's mlx-lm names; "mlx-lm-gpt2" in early exports) or "canonical"
MLX_LM_NAMES = ("mlx-lm", "mlx-lm-gpt2")


@dataclass
class MLXCheckpoint:
    directory: Path
    model_type: str  # Hugging Face's name, e.g. gpt2, distilbert, qwen3
    config: ModelConfig
    weights: dict[str, mx.array]  # canonical names; quantized layers carry .scales and .biases
    dtype: str  # fp32, fp16 or bf16
    quantization: dict | None  # {"bits": 4 | 8, "group_size": 32 | 64 | 128} or None


def is_mlx_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    try:
        return path.is_file() and FORMAT_KEY in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_mlx_checkpoint(directory: str | Path) -> MLXCheckpoint:
    """Read a directory written by `convert.mlx_export.export_mlx`."""
    directory = Path(directory)
    if not is_mlx_checkpoint(directory):
        raise CheckpointError(f"{directory}: not an MLX directory written by 'ondevice convert --to mlx'")
    raw = json.loads((directory / "config.json").read_text())
    meta = raw[FORMAT_KEY]
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{directory / 'config.json'}: unsupported {FORMAT_KEY} entry {meta!r}")
    config = config_from_dict({"family": meta.get("family"), **meta["config"]}, str(directory / "config.json"))
    try:
        stored = mx.load(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: not readable MLX weights ({exc})") from exc
    if not isinstance(stored, dict):  # a single array (an .npy file), not named weights
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: not readable MLX weights (no named tensors)")
    mlx_lm = mlx_lm_of(config)
    if meta.get("names") in MLX_LM_NAMES:
        if mlx_lm is None:
            raise CheckpointError(
                f"{directory / 'config.json'}: names 'mlx-lm' for the {config.family} family, "
                f"which mlx-lm does not have"
            )
        weights = mlx_lm.from_mlx_lm(stored, config)
    else:
        weights = stored
    return MLXCheckpoint(
        directory, raw.get("model_type", config.family), config, weights, meta["dtype"], meta.get("quantization")
    )
