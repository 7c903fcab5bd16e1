"""Gemma 3 under mlx-lm's names and config keys (its `gemma3_text` model), so `mlx_lm.load(dir)` runs an export.

Weight names are those of the family's one name map (`hf_gemma3.LAYER_NAMES`, `TOP_NAMES`) as `Gemma3ForCausalLM`
spells them. Our MLX model holds each norm as mlx-lm does (`w`, multiplying by `1 + w`: `mlx_model/gemma3.py`), so
its parameters are written as they are; read back, a norm becomes the canonical multiplier `1 + w` again.

What mlx-lm's class cannot express (`mlx_lm_incompatibility` names it): attention biases, an activation other than
GELU (tanh), linear RoPE scaling on the sliding layers, and a layout of sliding layers other than "every n-th layer
global" with at least one global layer (it knows `sliding_window_pattern` only). One difference it has and we
state rather than refuse: mlx-lm rounds the embedding scale sqrt(hidden) to bfloat16 where transformers rounds it to
float32 (exact for widths whose square root is a small binary fraction, 0.2% off for Gemma 3 270M's 640)."""

from __future__ import annotations

import re

import mlx.core as mx

from canonical.errors import CheckpointError
from canonical.gemma3 import Gemma3Config
from convert.hf_gemma3 import LAYER_NAMES, TOP_NAMES, WRAPPER
from mlx_model.gemma3 import NORMS

_TOP_NAMES = {name: hf if name == "lm_head" else WRAPPER + hf for name, hf in TOP_NAMES.items()}
_LEAVES = ("weight", "bias", "scales", "biases")
_DROPPED_KEYS = ("quantization", "quantization_config", "rope_parameters", "layer_types", "auto_map", "text_config",
                 "vision_config", "architectures")  # fmt: skip


def sliding_pattern(cfg: Gemma3Config) -> int | None:
    """n where every n-th layer is global and the others slide (mlx-lm's `sliding_window_pattern`), or None when the
    layout is not of that form or has no global layer."""
    if all(cfg.sliding_layers):
        return None
    pattern = cfg.sliding_layers.index(False) + 1
    every_nth = tuple((i + 1) % pattern != 0 for i in range(cfg.num_layers))
    return pattern if every_nth == cfg.sliding_layers else None


def mlx_lm_incompatibility(cfg: Gemma3Config) -> str | None:
    """Why mlx-lm's gemma3_text cannot run `cfg` with our logits, or None when it can."""
    if cfg.attention_bias:
        return "mlx-lm's gemma3_text has no attention biases"
    if cfg.activation != "gelu_tanh":
        return f"mlx-lm's gemma3_text hard-codes a GELU (tanh) gated MLP; this one uses {cfg.activation}"
    if cfg.rope_factor_local != 1.0:
        return "mlx-lm's gemma3_text scales RoPE on the global layers only"
    if sliding_pattern(cfg) is None:
        return "mlx-lm's gemma3_text knows only 'every n-th layer global' (sliding_window_pattern), with one at least"
    return None


def mlx_lm_compatible(cfg: Gemma3Config) -> bool:
    """Whether `mlx_lm.load` of the export computes our logits (see `mlx_lm_incompatibility`)."""
    return mlx_lm_incompatibility(cfg) is None


def to_mlx_lm(weights: dict[str, mx.array], cfg: Gemma3Config) -> dict[str, mx.array]:
    """Our MLX model's parameters under mlx-lm's names; a tied head is not written."""
    return {
        _rename(name, to_mlx=True): array
        for name, array in weights.items()
        if not (cfg.tie_word_embeddings and name.startswith("lm_head."))
    }


def from_mlx_lm(weights: dict[str, mx.array], cfg: Gemma3Config) -> dict[str, mx.array]:
    """mlx-lm names -> canonical, norms as the multipliers `1 + w` in float32 (exact for the fp16 and bf16 `w` an
    export holds; the model takes the 1 off again as it loads)."""
    out: dict[str, mx.array] = {}
    for name, array in weights.items():
        canon = _rename(name, to_mlx=False)
        out[canon] = array.astype(mx.float32) + 1.0 if NORMS.fullmatch(canon) else array
    return out


def mlx_lm_config(cfg: Gemma3Config, source_config: dict) -> dict:
    """The config.json mlx-lm reads: model_type gemma3_text with every key its class reads set from `cfg` (a
    multimodal `gemma3` source's text model flattened to the top)."""
    source = source_config.get("text_config", source_config) if isinstance(source_config, dict) else {}
    config = {k: v for k, v in source.items() if k not in _DROPPED_KEYS}
    config |= {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_positions,
        # transformers' config class types it an int (and refuses 256.0); a fractional one stays a float
        "query_pre_attn_scalar": (int(cfg.query_pre_attn_scalar) if cfg.query_pre_attn_scalar.is_integer()
                                  else cfg.query_pre_attn_scalar),
        "sliding_window": cfg.sliding_window,
        "sliding_window_pattern": sliding_pattern(cfg),
        "rope_theta": cfg.rope_theta_global,
        "rope_local_base_freq": cfg.rope_theta_local,
        "rope_scaling": (None if cfg.rope_factor_global == 1.0
                         else {"rope_type": "linear", "type": "linear", "factor": cfg.rope_factor_global}),
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }  # fmt: skip
    if cfg.bos_token_id is not None:
        config["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:  # every id of config.json and generation_config.json, so mlx-lm stops where we do
        config["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_id
    return config


def _rename(name: str, to_mlx: bool) -> str:
    module, _, leaf = name.rpartition(".")
    if leaf not in _LEAVES:
        raise CheckpointError(f"weight '{name}' has no counterpart in mlx-lm's gemma3_text")
    top = _TOP_NAMES if to_mlx else {v: k for k, v in _TOP_NAMES.items()}
    if module in top:
        return f"{top[module]}.{leaf}"
    pattern = r"layers\.(\d+)\.(.+)" if to_mlx else re.escape(WRAPPER) + r"layers\.(\d+)\.(.+)"
    match = re.fullmatch(pattern, module)
    inner = LAYER_NAMES if to_mlx else {v: k for k, v in LAYER_NAMES.items()}
    if match is None or match.group(2) not in inner:
        raise CheckpointError(f"weight '{name}' has no counterpart in mlx-lm's gemma3_text")
    i, part = match.groups()
    return f"{WRAPPER}layers.{i}.{inner[part]}.{leaf}" if to_mlx else f"layers.{i}.{inner[part]}.{leaf}"
