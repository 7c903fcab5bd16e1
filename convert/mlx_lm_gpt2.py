"""mlx-lm's names for GPT-2, so that `mlx_lm.load` runs our GPT-2 MLX exports: `model.h.0.attn.c_attn.weight`,
`(out, in)`, q/k/v fused. Like every name from outside, they stay in `convert/`: models see canonical names."""

from __future__ import annotations

import re

from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config
from convert.hf_gpt2 import NAMES, QKV

# canonical prefix -> mlx-lm GPT-2 prefix ({i}: layer index): the Hugging Face names of the family's one map
# (`hf_gpt2.NAMES`) under mlx-lm's `model.`; q, k and v share c_attn (fused rows).
_NAMES = {canon: hf if canon == "lm_head" else f"model.{hf}" for canon, hf in NAMES.items()}
_FUSED = f"model.{QKV}"
_QKV = ("q", "k", "v")


def mlx_lm_compatible(config: GPT2Config) -> bool:
    """mlx-lm's GPT-2 hard-codes a tied head, a 4x MLP and the tanh GELU."""
    return (
        config.tie_word_embeddings
        and config.intermediate_size == 4 * config.hidden_size
        and config.activation == "gelu_tanh"
    )


def mlx_lm_config(config: GPT2Config, source: dict) -> dict:
    """The source config.json with what mlx-lm requires that transformers 5 omits."""
    return {**source, "n_ctx": source.get("n_ctx", config.max_positions)}


def to_mlx_lm(weights: dict, config: GPT2Config) -> dict:
    """Canonical names -> mlx-lm's. Affine quantization groups run along each row's input axis, so fusing
    q/k/v by stacking rows works for `.weight`, `.scales` and `.biases` alike."""
    import mlx.core as mx

    out = {}
    for name, array in weights.items():
        match = re.fullmatch(r"layers\.(\d+)\.attn\.([qkv])\.(\w+)", name)
        if match:
            i, proj, leaf = match.groups()
            if proj == "q":
                parts = [weights[f"layers.{i}.attn.{p}.{leaf}"] for p in _QKV]
                out[f"{_FUSED.format(i=i)}.{leaf}"] = mx.concatenate(parts, axis=0)
            continue
        out[_rename(name, _NAMES)] = array
    return out


def from_mlx_lm(weights: dict, config: GPT2Config) -> dict:
    import mlx.core as mx

    out = {}
    reverse = {v: k for k, v in _NAMES.items()}
    for name, array in weights.items():
        match = re.fullmatch(re.escape(_FUSED).replace(r"\{i\}", r"(\d+)") + r"\.(\w+)", name)
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
