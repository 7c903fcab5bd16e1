"""Llama-family checkpoints in Hugging Face layout -> `LlamaConfig` + canonical weights.

One reader for four `model_type`s (Llama 2/3.x and SmolLM2 are `llama`; `mistral`, `qwen2`, `qwen3`).
Quirks handled here and nowhere else: config.json spells the RoPE either the transformers-5 way
(`rope_parameters`) or the hub's transformers-4 way (`rope_theta` + `rope_scaling`, whose type old
checkpoints call `type`); the end-of-sequence ids are a number or a list, with more of them in
generation_config.json (Llama 3); which projections carry biases depends on the dialect (Qwen2: q/k/v
always, o never); a missing field takes the default of the dialect's transformers config class (Qwen3's
`head_dim` is 128, not width/heads); keys come with (`*ForCausalLM`) or without (`*Model`) the `model.`
prefix; `lm_head.weight` is absent when tied to the token embedding. Weights come back as float32."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from canonical.errors import CheckpointError
from canonical.llama import Dialect, LlamaConfig
from canonical.weights import LazyWeights
from convert.activations import canonical_activation
from convert.hf_common import (
    CheckpointTensors,
    check_heads,
    config_bool,
    config_float,
    config_int,
    norm_eps,
    read_generation_config,
    token_ids,
)
from convert.weights import RawWeights

DIALECTS: tuple[Dialect, ...] = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")

# Rotary-frequency buffers that old checkpoints saved next to the weights.
_IGNORED = (r"(layers\.\d+\.self_attn\.)?rotary_emb\.(original_)?inv_freq",)

# The defaults of transformers' config classes (5.x) for fields a config.json may leave out.
_COMMON = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, head_dim=None)
_DEFAULTS: dict[str, dict] = {
    "llama": _COMMON | dict(vocab_size=32000, intermediate_size=11008, num_key_value_heads=None,
                            max_position_embeddings=2048, bos_token_id=1, eos_token_id=2),
    "mistral": _COMMON | dict(vocab_size=32000, intermediate_size=14336, num_key_value_heads=8,
                              max_position_embeddings=131072, bos_token_id=1, eos_token_id=2, sliding_window=4096),
    "qwen2": _COMMON | dict(vocab_size=151936, intermediate_size=22016, num_key_value_heads=32,
                            max_position_embeddings=32768, bos_token_id=None, eos_token_id=None, sliding_window=4096),
    "qwen3": _COMMON | dict(vocab_size=151936, intermediate_size=22016, num_key_value_heads=32, head_dim=128,
                            max_position_embeddings=32768, bos_token_id=None, eos_token_id=None, sliding_window=4096),
}  # fmt: skip


def read_config(config: dict, model_type: str, directory: Path) -> LlamaConfig:
    if model_type not in DIALECTS:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not a Llama-family dialect (supported: {', '.join(DIALECTS)})"
        )
    defaults = _DEFAULTS[model_type]
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise CheckpointError(f"config.json: quantization_config (quant_method={method!r}) is not supported")

    hidden = config_int(config, "hidden_size", defaults["hidden_size"])
    heads = config_int(config, "num_attention_heads", defaults["num_attention_heads"])
    if config.get("head_dim", defaults["head_dim"]) is None:
        check_heads(hidden, heads, "hidden_size", "num_attention_heads")
        head_dim = hidden // heads
    else:
        head_dim = config_int(config, "head_dim", defaults["head_dim"])
    if head_dim % 2:
        raise CheckpointError(f"config.json: head_dim={head_dim} must be even for rotary position embeddings")
    if config.get("num_key_value_heads", defaults["num_key_value_heads"]) is None:
        kv_heads = heads
    else:
        kv_heads = config_int(config, "num_key_value_heads", defaults["num_key_value_heads"])
    check_heads(heads, kv_heads, "num_attention_heads", "num_key_value_heads")

    layers = config_int(config, "num_hidden_layers", defaults["num_hidden_layers"])
    max_positions = config_int(config, "max_position_embeddings", defaults["max_position_embeddings"])
    _check_sliding_window(config, model_type, max_positions, layers)

    act_name = config.get("hidden_act", "silu")
    activation = canonical_activation(act_name, "hidden_act")
    if activation != "silu":
        raise CheckpointError(
            f"config.json: hidden_act={act_name!r} is not supported ({model_type}'s gated MLP is SwiGLU)"
        )

    if model_type == "qwen2":  # q/k/v biases always, none on o, whatever attention_bias says
        attention_bias, out_bias = True, False
    elif model_type == "mistral":  # transformers' Mistral has no bias switch
        attention_bias = out_bias = False
    else:
        attention_bias = out_bias = config_bool(config, "attention_bias", False)

    generation = read_generation_config(directory)
    eos = token_ids(config.get("eos_token_id", defaults["eos_token_id"]), "config.json", "eos_token_id")
    eos += token_ids(generation.get("eos_token_id"), "generation_config.json", "eos_token_id")
    bos = token_ids(config.get("bos_token_id", defaults["bos_token_id"]), "config.json", "bos_token_id")
    bos = bos or token_ids(generation.get("bos_token_id"), "generation_config.json", "bos_token_id")

    return LlamaConfig(
        vocab_size=config_int(config, "vocab_size", defaults["vocab_size"]),
        max_positions=max_positions,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=config_int(config, "intermediate_size", defaults["intermediate_size"]),
        rms_norm_eps=norm_eps(config, "rms_norm_eps", 1e-6),
        **_rope_fields(config, max_positions),
        attention_bias=attention_bias,
        attention_out_bias=out_bias,
        mlp_bias=config_bool(config, "mlp_bias", False) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        activation=activation,
        tie_word_embeddings=config_bool(config, "tie_word_embeddings", False),
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=tuple(dict.fromkeys(eos)),
        dialect=model_type,
    )


def read_weights(cfg: LlamaConfig, raw: RawWeights) -> tuple[LlamaConfig, LazyWeights]:
    summary = (
        f"model_type={cfg.dialect}, num_hidden_layers={cfg.num_layers}, hidden_size={cfg.hidden_size}, "
        f"num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}, "
        f"intermediate_size={cfg.intermediate_size}, vocab_size={cfg.vocab_size}, "
        f"tie_word_embeddings={str(cfg.tie_word_embeddings).lower()}"
    )
    ckpt = CheckpointTensors(raw, prefixes=(WRAPPER,), config_summary=summary)
    names = _hf_names(cfg)
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    ckpt.check({hf: shape for hf, shape in names.values()}, optional, _IGNORED)

    for hf, _ in names.values():
        if ckpt.has(hf) and not ckpt.dtype(hf).is_floating_point:
            raise CheckpointError(
                f"{ckpt.where(hf)}: tensor '{ckpt.original[hf]}' has dtype {ckpt.dtype(hf)}, "
                "but only unquantized floating-point weights are supported"
            )

    def f32(hf: str) -> torch.Tensor:
        return ckpt[hf].to(torch.float32).contiguous()

    # Read when asked for, in fp32 (a bf16 checkpoint stays bf16 on disk until a tensor is taken): a model's builder
    # holds one tensor at a time beside what it built, and a chunked conversion only its part's.
    w = LazyWeights()
    for canon, (hf, shape) in names.items():
        if canon != "lm_head.weight":
            w.add(canon, shape, functools.partial(f32, hf))
    if not cfg.tie_word_embeddings:
        w.add("lm_head.weight", names["lm_head.weight"][1], functools.partial(f32, "lm_head.weight"))
    else:
        if ckpt.has("lm_head.weight") and not torch.equal(f32("lm_head.weight"), w["tok_embed.weight"]):
            # transformers 5 would then use the stored head, transformers 4 the embedding: refuse to guess.
            raise CheckpointError(
                f"{ckpt.where('lm_head.weight')}: tensor 'lm_head.weight' differs from "
                f"'{ckpt.original['embed_tokens.weight']}', but config.json has tie_word_embeddings=true"
            )
        w.alias("lm_head.weight", "tok_embed.weight")
    return cfg, w


# The family's one name map: canonical module -> Hugging Face module, inside layer {i} (`layers.{i}.` on both sides)
# and at the top, as a `*Model` names them; a `*ForCausalLM` puts WRAPPER before all but the head, and so does mlx-lm
# (`convert/mlx_lm_llama.py` writes its exports from this map).
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "mlp_norm": "post_attention_layernorm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}
TOP_NAMES = {"tok_embed": "embed_tokens", "final_norm": "norm", "lm_head": "lm_head"}
WRAPPER = "model."


def _hf_names(cfg: LlamaConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Canonical name -> (Hugging Face name without the wrapper's `model.` prefix, expected shape)."""
    C, F, V, D = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    names: dict[str, tuple[str, tuple[int, ...]]] = {"tok_embed.weight": (f"{TOP_NAMES['tok_embed']}.weight", (V, C))}
    for i in range(cfg.num_layers):
        out = f"layers.{i}"

        def hf(canonical: str, leaf: str, i: int = i) -> str:
            return f"layers.{i}.{LAYER_NAMES[canonical]}.{leaf}"

        names[f"{out}.attn_norm.weight"] = (hf("attn_norm", "weight"), (C,))
        linears = {  # canonical: (out features, in features, has a bias)
            "attn.q": (cfg.q_width, C, cfg.attention_bias),
            "attn.k": (cfg.kv_width, C, cfg.attention_bias),
            "attn.v": (cfg.kv_width, C, cfg.attention_bias),
            "attn.o": (C, cfg.q_width, cfg.attention_out_bias),
            "mlp.gate": (F, C, cfg.mlp_bias),
            "mlp.up": (F, C, cfg.mlp_bias),
            "mlp.down": (C, F, cfg.mlp_bias),
        }
        for canon, (fan_out, fan_in, bias) in linears.items():
            names[f"{out}.{canon}.weight"] = (hf(canon, "weight"), (fan_out, fan_in))
            if bias:
                names[f"{out}.{canon}.bias"] = (hf(canon, "bias"), (fan_out,))
            if canon == "attn.o" and cfg.qk_norm:
                names[f"{out}.attn.q_norm.weight"] = (hf("attn.q_norm", "weight"), (D,))
                names[f"{out}.attn.k_norm.weight"] = (hf("attn.k_norm", "weight"), (D,))
        names[f"{out}.mlp_norm.weight"] = (hf("mlp_norm", "weight"), (C,))
    names["final_norm.weight"] = (f"{TOP_NAMES['final_norm']}.weight", (C,))
    names["lm_head.weight"] = (f"{TOP_NAMES['lm_head']}.weight", (V, C))
    return names


def _rope_fields(config: dict, max_positions: int) -> dict:
    """The RoPE fields of `LlamaConfig`, from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`
    (transformers 4). As in transformers, a non-empty `rope_scaling` wins and a `rope_theta` inside the dict wins."""
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    rope = config.get(key) or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"config.json: {key} must be an object, got {rope!r}")
    if any(isinstance(value, dict) for value in rope.values()):
        raise CheckpointError(f"config.json: {key} with a RoPE per layer type is not supported")
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope_type = rope.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(
            f"config.json: {key}.{type_key}={rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    for where, partial in ((f"{key}.partial_rotary_factor", rope), ("partial_rotary_factor", config)):
        if partial.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"config.json: {where}={partial['partial_rotary_factor']!r} is not supported")
    if "rope_theta" in rope:
        theta = config_float(rope, "rope_theta", None, field=f"{key}.rope_theta")
    else:
        theta = config_float(config, "rope_theta", 10000.0, field="rope_theta")
    fields: dict = dict(rope_theta=theta, rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        fields["rope_factor"] = config_float(rope, "factor", None, field=f"{key}.factor")
    if rope_type == "llama3":
        low = config_float(rope, "low_freq_factor", None, field=f"{key}.low_freq_factor")
        high = config_float(rope, "high_freq_factor", None, field=f"{key}.high_freq_factor")
        if high <= low:
            raise CheckpointError(
                f"config.json: {key}.high_freq_factor={high} must be greater than {key}.low_freq_factor={low}"
            )
        if "original_max_position_embeddings" in config:  # a top-level value wins in transformers too
            original = config_int(config, "original_max_position_embeddings")
        elif "original_max_position_embeddings" in rope:
            original = config_int(
                rope, "original_max_position_embeddings", field=f"{key}.original_max_position_embeddings"
            )
        else:
            original = max_positions
        fields |= dict(rope_low_freq_factor=low, rope_high_freq_factor=high, rope_original_max_positions=original)
    return fields


def _check_sliding_window(config: dict, model_type: str, max_positions: int, layers: int) -> None:
    """Refuse attention limited to a window shorter than the context: our attention sees every position."""
    if model_type == "llama":
        return
    window = config.get("sliding_window", _DEFAULTS[model_type]["sliding_window"])
    if model_type in ("qwen2", "qwen3"):
        # As transformers: only with use_sliding_window, and only on the layers that layer_types (or, without it,
        # max_window_layers) marks as sliding.
        if not config_bool(config, "use_sliding_window", False):
            return
        layer_types = config.get("layer_types")
        if layer_types is None:
            sliding = config_int(config, "max_window_layers", 28, minimum=0) < layers
        else:
            sliding = isinstance(layer_types, list) and "sliding_attention" in layer_types
        if not sliding:
            return
    if window is None:
        return
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise CheckpointError(f"config.json: 'sliding_window' must be an integer >= 1 or null, got {window!r}")
    if window < max_positions:
        raise CheckpointError(
            f"config.json: sliding_window={window} is shorter than max_position_embeddings={max_positions} "
            "(sliding-window attention is not supported)"
        )
