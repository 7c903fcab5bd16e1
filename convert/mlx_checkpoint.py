"""Exported MLX directories: their on-disk format, and reading one back into canonical form.

An MLX directory holds
    config.json         the source's Hugging Face config, plus `quantization` (mlx-lm's key, when
                        quantized) and `ondevice_mlx` (our canonical config, dtype, weight naming)
    model.safetensors   MLX weights: quantized layers as `.weight` (packed uint32), `.scales`, `.biases`
    tokenizer files     copied from the source, so tokenizers load from this directory alone

Weight names: GPT-2 is written under mlx-lm's names (`model.h.0.attn.c_attn.weight`, `(out, in)`,
q/k/v fused), so `mlx_lm.load(dir)` runs it; other families under our canonical names. Like every
Hugging Face name, mlx-lm's stay here in `convert/`: models only ever see canonical names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import mlx.core as mx

from canonical.bert import BertConfig
from canonical.config import ModelConfig
from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config

FORMAT_KEY = "ondevice_mlx"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIGS = {"gpt2": GPT2Config, "bert": BertConfig}

# canonical prefix -> mlx-lm GPT-2 prefix ({i}: layer index); q, k and v share c_attn (fused rows).
_GPT2_NAMES = {
    "tok_embed": "model.wte",
    "pos_embed": "model.wpe",
    "final_norm": "model.ln_f",
    "lm_head": "lm_head",
    "layers.{i}.attn_norm": "model.h.{i}.ln_1",
    "layers.{i}.attn.o": "model.h.{i}.attn.c_proj",
    "layers.{i}.mlp_norm": "model.h.{i}.ln_2",
    "layers.{i}.mlp.fc1": "model.h.{i}.mlp.c_fc",
    "layers.{i}.mlp.fc2": "model.h.{i}.mlp.c_proj",
}
_QKV = ("q", "k", "v")


@dataclass
class MLXCheckpoint:
    directory: Path
    model_type: str  # Hugging Face's name: gpt2, bert, distilbert
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
    if meta.get("version") != FORMAT_VERSION or meta.get("family") not in CONFIGS:
        raise CheckpointError(f"{directory / 'config.json'}: unsupported {FORMAT_KEY} entry {meta!r}")
    config_cls = CONFIGS[meta["family"]]
    known = {f.name for f in fields(config_cls)}
    config = config_cls(**{k: v for k, v in meta["config"].items() if k in known})
    try:
        stored = mx.load(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: not readable MLX weights ({exc})") from exc
    weights = from_mlx_lm_gpt2(stored) if meta["names"] == "mlx-lm-gpt2" else stored
    return MLXCheckpoint(
        directory, raw.get("model_type", meta["family"]), config, weights, meta["dtype"], meta.get("quantization")
    )


def to_mlx_lm_gpt2(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Canonical GPT-2 names -> mlx-lm's. Affine quantization groups run along each row's input
    axis, so fusing q/k/v by stacking rows works for `.weight`, `.scales` and `.biases` alike."""
    out: dict[str, mx.array] = {}
    for name, array in weights.items():
        match = re.fullmatch(r"layers\.(\d+)\.attn\.([qkv])\.(\w+)", name)
        if match:
            i, proj, leaf = match.groups()
            if proj == "q":
                parts = [weights[f"layers.{i}.attn.{p}.{leaf}"] for p in _QKV]
                out[f"model.h.{i}.attn.c_attn.{leaf}"] = mx.concatenate(parts, axis=0)
            continue
        out[_rename(name, _GPT2_NAMES)] = array
    return out


def from_mlx_lm_gpt2(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    reverse = {v: k for k, v in _GPT2_NAMES.items()}
    for name, array in weights.items():
        match = re.fullmatch(r"model\.h\.(\d+)\.attn\.c_attn\.(\w+)", name)
        if match:
            i, leaf = match.groups()
            for proj, part in zip(_QKV, mx.split(array, 3, axis=0), strict=True):
                out[f"layers.{i}.attn.{proj}.{leaf}"] = part
            continue
        out[_rename(name, reverse)] = array
    return out


def _rename(name: str, table: dict[str, str]) -> str:
    for source, target in table.items():
        pattern = re.escape(source).replace(r"\{i\}", r"(?P<i>\d+)")
        match = re.match(pattern + r"\.", name)
        if match:
            layer = match.groupdict().get("i")
            prefix = target.format(i=layer) if layer is not None else target
            return prefix + name[match.end() - 1 :]
    raise CheckpointError(f"weight '{name}' has no counterpart in mlx-lm's GPT-2")
