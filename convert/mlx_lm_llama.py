"""The Llama family under mlx-lm's names and config keys, so `mlx_lm.load(dir)` runs an exported directory.

mlx-lm runs these dialects with three model classes, each able to express part of our config:

    llama   (mistral is mapped to it): any head_dim, one `attention_bias` switch for q, k, v *and* o,
            `mlp_bias`, RoPE default / linear / llama3, tied or untied head; no q/k norm
    qwen2   biases on q, k, v and never on o, head_dim = hidden_size / heads, no MLP bias
    qwen3   q/k RMSNorm, any head_dim, no bias anywhere

So a config is written for the class of its own dialect when that class expresses it, and otherwise
for `llama`: Qwen2's q/k/v biases without an o bias (or an o bias without q/k/v biases) become
`attention_bias` with the missing biases written as zeros, which adds nothing to any output. Only two
things are out of mlx-lm's reach (`mlx_lm_incompatibility` names them): q/k norm together with any bias
(its qwen3 has no bias to load), and an MLP activation other than SiLU (every class hard-codes SwiGLU).

Weight names are those of the family's one name map (`hf_llama.LAYER_NAMES`, `TOP_NAMES`) as a *ForCausalLM
spells them: `layers.{i}.attn.q` is `model.layers.{i}.self_attn.q_proj`, `tok_embed` is `model.embed_tokens`,
`lm_head` stays (and is absent when tied: mlx-lm's head is then `embed_tokens.as_linear`). A quantized layer's
`.weight` is packed and comes with `.scales` and `.biases`, which rename like `.weight`.
"""

from __future__ import annotations

import re

import mlx.core as mx

from canonical.errors import CheckpointError
from canonical.llama import LlamaConfig
from convert.hf_llama import LAYER_NAMES, TOP_NAMES, WRAPPER

# canonical module -> mlx-lm module, inside layer {i} or at the top: the Hugging Face names of the family's one map
# (`hf_llama.LAYER_NAMES`), as a *ForCausalLM spells them.
_LAYER_NAMES = LAYER_NAMES
_TOP_NAMES = {name: hf if name == "lm_head" else WRAPPER + hf for name, hf in TOP_NAMES.items()}
_LEAVES = ("weight", "bias", "scales", "biases")

# Keys of a source config.json that would make mlx-lm build something else than our config says.
_DROPPED_KEYS = (
    "quantization",  # the exporter sets mlx-lm's own key when it quantizes
    "quantization_config",  # a GPTQ/AWQ source's: mlx-lm would read it as the layout of these weights
    "rope_scaling",
    "rope_parameters",
    "layer_types",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "auto_map",
)


def mlx_lm_incompatibility(cfg: LlamaConfig) -> str | None:
    """Why mlx-lm cannot run `cfg` with our logits, or None when it can."""
    if cfg.activation != "silu":
        return f"mlx-lm's Llama-family models hard-code a SiLU-gated MLP; this one uses {cfg.activation}"
    if cfg.qk_norm and (cfg.attention_bias or cfg.attention_out_bias or cfg.mlp_bias):
        return "mlx-lm's qwen3 (its only model with q/k norm) has no attention or MLP biases"
    return None


def mlx_lm_compatible(cfg: LlamaConfig) -> bool:
    """Whether `mlx_lm.load` of the export computes our logits (see `mlx_lm_incompatibility`)."""
    return mlx_lm_incompatibility(cfg) is None


def mlx_lm_model_type(cfg: LlamaConfig) -> str:
    """The mlx-lm model class the export is written for: the dialect's own when it expresses the config."""
    if cfg.qk_norm:
        return "qwen3"
    if cfg.dialect == "qwen2" and _qwen2_expresses(cfg):
        return "qwen2"
    return cfg.dialect if cfg.dialect in ("llama", "mistral") else "llama"


def _qwen2_expresses(cfg: LlamaConfig) -> bool:
    return (
        cfg.attention_bias
        and not cfg.attention_out_bias
        and not cfg.mlp_bias
        and cfg.num_heads * cfg.head_dim == cfg.hidden_size
    )


def _zero_filled(cfg: LlamaConfig) -> tuple[str, ...]:
    """The attention biases the llama class needs but `cfg` does not have: written as zeros."""
    if mlx_lm_model_type(cfg) not in ("llama", "mistral") or cfg.attention_bias == cfg.attention_out_bias:
        return ()
    return ("o",) if cfg.attention_bias else ("q", "k", "v")


def to_mlx_lm(weights: dict[str, mx.array], cfg: LlamaConfig) -> dict[str, mx.array]:
    """Canonical names -> mlx-lm's, for the class `mlx_lm_model_type(cfg)`.

    `weights` are the parameters of our MLX model (`tree_flatten(model.parameters())`), quantized or
    not. A tied head is not written (mlx-lm drops `lm_head.weight` of a tied model anyway); the zero
    biases of `_zero_filled` are added in the dtype of their layer's scales (quantized) or weight."""
    out: dict[str, mx.array] = {}
    for name, array in weights.items():
        if cfg.tie_word_embeddings and name.startswith("lm_head."):
            continue
        out[_rename(name, to_mlx=True)] = array
    widths = {"q": cfg.q_width, "k": cfg.kv_width, "v": cfg.kv_width, "o": cfg.hidden_size}
    for i in range(cfg.num_layers):
        for proj in _zero_filled(cfg):
            prefix = f"layers.{i}.attn.{proj}"
            like = weights.get(f"{prefix}.scales", weights[f"{prefix}.weight"])
            out[_rename(f"{prefix}.bias", to_mlx=True)] = mx.zeros((widths[proj],), dtype=like.dtype)
    return out


def from_mlx_lm(weights: dict[str, mx.array], cfg: LlamaConfig) -> dict[str, mx.array]:
    """mlx-lm names -> canonical, dropping the zero biases `to_mlx_lm` added (no `lm_head` when tied)."""
    out = {_rename(name, to_mlx=False): array for name, array in weights.items()}
    for i in range(cfg.num_layers):
        for proj in _zero_filled(cfg):
            out.pop(f"layers.{i}.attn.{proj}.bias", None)
    return out


def mlx_lm_config(cfg: LlamaConfig, source_config: dict) -> dict:
    """The config.json of an export that mlx-lm reads: the source's keys, less those that would make
    mlx-lm build another model (sliding windows, a source quantization, RoPE spelt another way), with
    every key its model classes read set from `cfg`. RoPE is spelt both ways (`rope_theta` +
    `rope_scaling`, and transformers 5's `rope_parameters`), consistently."""
    config = {k: v for k, v in source_config.items() if k not in _DROPPED_KEYS}
    rope_scaling = _rope_scaling(cfg)
    config |= {
        "model_type": mlx_lm_model_type(cfg),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_positions,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta, **(rope_scaling or {})},
        "rope_traditional": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias or cfg.attention_out_bias,  # llama's one switch (zeros fill the rest)
        "mlp_bias": cfg.mlp_bias,
        "layer_types": ["full_attention"] * cfg.num_layers,
        "sliding_window": None,
        "use_sliding_window": False,
    }
    if cfg.bos_token_id is not None:
        config.setdefault("bos_token_id", cfg.bos_token_id)
    if cfg.eos_token_ids:  # every id of config.json and generation_config.json, so mlx-lm stops where we do
        config["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_id
    return config


def _rope_scaling(cfg: LlamaConfig) -> dict | None:
    """`rope_scaling` as mlx-lm's `initialize_rope` reads it (`rope_type`, or the older `type`)."""
    if cfg.rope_type == "default":
        return None
    if cfg.rope_type == "linear":
        return {"rope_type": "linear", "type": "linear", "factor": cfg.rope_factor}
    return {
        "rope_type": "llama3",
        "factor": cfg.rope_factor,
        "low_freq_factor": cfg.rope_low_freq_factor,
        "high_freq_factor": cfg.rope_high_freq_factor,
        "original_max_position_embeddings": cfg.rope_original_max_positions,
    }


def _rename(name: str, to_mlx: bool) -> str:
    module, _, leaf = name.rpartition(".")
    if leaf not in _LEAVES:
        raise CheckpointError(f"weight '{name}' has no counterpart in mlx-lm's Llama family")
    top = _TOP_NAMES if to_mlx else {v: k for k, v in _TOP_NAMES.items()}
    if module in top:
        return f"{top[module]}.{leaf}"
    pattern = r"layers\.(\d+)\.(.+)" if to_mlx else re.escape(WRAPPER) + r"layers\.(\d+)\.(.+)"
    match = re.fullmatch(pattern, module)
    inner = _LAYER_NAMES if to_mlx else {v: k for k, v in _LAYER_NAMES.items()}
    if match is None or match.group(2) not in inner:
        raise CheckpointError(f"weight '{name}' has no counterpart in mlx-lm's Llama family")
    i, part = match.groups()
    return f"{WRAPPER}layers.{i}.{inner[part]}.{leaf}" if to_mlx else f"layers.{i}.{inner[part]}.{leaf}"
