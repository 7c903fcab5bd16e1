"""Gemma 3 checkpoints in Hugging Face layout -> `Gemma3Config` + canonical weights.

Two `model_type`s: `gemma3_text` (Gemma 3 270M and 1B: `Gemma3ForCausalLM`, keys under `model.`), and `gemma3` (the
multimodal checkpoints' config, its text model under `text_config`) where the weights hold the language model only,
under `language_model.` or `model.language_model.` (a checkpoint that still holds the vision tower is refused).
Quirks handled here and nowhere else: which layers slide is said by `layer_types` (transformers 5) or by
`sliding_window_pattern` (every n-th layer global, the hub's older configs); the RoPE of each kind of layer is
`rope_parameters.{sliding_attention,full_attention}` (transformers 5) or `rope_theta` (global) +
`rope_local_base_freq` (local) + `rope_scaling` (global only); the norms store `w` for a multiplier of `1 + w`,
which is what the canonical weights hold; the end-of-turn ids come from generation_config.json as well. Options our
models do not compute (logit soft-capping, bidirectional attention, quantized weights) are refused in one line
naming the field. Weights come back as float32."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch

from canonical.errors import CheckpointError
from canonical.gemma3 import Gemma3Config
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

MODEL_TYPES = ("gemma3_text", "gemma3")
ROPE_TYPES = ("default", "linear")
LAYER_TYPES = {"sliding_attention": True, "full_attention": False}

# The defaults of transformers' Gemma3TextConfig (5.x) for fields a config.json may leave out.
_DEFAULTS: dict[str, Any] = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
                 bos_token_id=2, eos_token_id=1, query_pre_attn_scalar=256, sliding_window=4096,
                 sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)  # fmt: skip

# The family's one name map: canonical module -> Hugging Face module, inside layer {i} (`layers.{i}.` on both sides)
# and at the top, as `Gemma3TextModel` names them; `Gemma3ForCausalLM` puts WRAPPER before all but the head.
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
    "mlp_post_norm": "post_feedforward_layernorm",
}
TOP_NAMES = {"tok_embed": "embed_tokens", "final_norm": "norm", "lm_head": "lm_head"}
WRAPPER = "model."
# Where a multimodal (`gemma3`) checkpoint keeps its language model: transformers 5 (`model.language_model.`, the
# head at the top), transformers 4 (`language_model.model.`, the head under `language_model.`). Longest first.
_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", WRAPPER)
_VISION = ("vision_tower", "multi_modal_projector")

# Norms whose stored weight `w` multiplies as `1 + w`: every norm of the model.
_NORMS = {"attn_norm", "attn.q_norm", "attn.k_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm", "final_norm"}


def read_config(config: dict, model_type: str, directory: Path) -> Gemma3Config:
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not Gemma 3 text (supported: {', '.join(MODEL_TYPES)})"
        )
    top = config
    if model_type == "gemma3":
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError("config.json: a gemma3 checkpoint needs its language model's 'text_config' object")
        config = text
    for source in (top, config):
        quantization = source.get("quantization_config")
        if quantization:
            method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
            raise CheckpointError(f"config.json: quantization_config (quant_method={method!r}) is not supported")
    for field in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(field) is not None:
            raise CheckpointError(f"config.json: {field}={config[field]!r} is not supported (only null)")
    if config_bool(config, "use_bidirectional_attention", False):
        raise CheckpointError("config.json: use_bidirectional_attention=true is not supported (a causal LM only)")

    hidden = config_int(config, "hidden_size", _DEFAULTS["hidden_size"])
    heads = config_int(config, "num_attention_heads", _DEFAULTS["num_attention_heads"])
    kv_heads = config_int(config, "num_key_value_heads", _DEFAULTS["num_key_value_heads"])
    check_heads(heads, kv_heads, "num_attention_heads", "num_key_value_heads")
    head_dim = config_int(config, "head_dim", _DEFAULTS["head_dim"])
    if head_dim % 2:
        raise CheckpointError(f"config.json: head_dim={head_dim} must be even for rotary position embeddings")
    layers = config_int(config, "num_hidden_layers", _DEFAULTS["num_hidden_layers"])
    sliding = _sliding_layers(config, layers)
    window = config.get("sliding_window", _DEFAULTS["sliding_window"])
    if window is None and not any(sliding):
        window = 1  # unused: no layer slides
    window = config_int({"sliding_window": window}, "sliding_window")

    act_name = config.get("hidden_activation", config.get("hidden_act", "gelu_pytorch_tanh"))
    field = "hidden_activation" if "hidden_activation" in config or "hidden_act" not in config else "hidden_act"
    activation = canonical_activation(act_name, field)

    generation = read_generation_config(directory)
    eos = token_ids(config.get("eos_token_id", top.get("eos_token_id", _DEFAULTS["eos_token_id"])), "config.json",
                    "eos_token_id")  # fmt: skip
    eos += token_ids(generation.get("eos_token_id"), "generation_config.json", "eos_token_id")
    bos = token_ids(config.get("bos_token_id", top.get("bos_token_id", _DEFAULTS["bos_token_id"])), "config.json",
                    "bos_token_id")  # fmt: skip
    bos = bos or token_ids(generation.get("bos_token_id"), "generation_config.json", "bos_token_id")
    tie = config_bool(top if "tie_word_embeddings" in top else config, "tie_word_embeddings", True)

    return Gemma3Config(
        vocab_size=config_int(config, "vocab_size", _DEFAULTS["vocab_size"]),
        max_positions=config_int(config, "max_position_embeddings", _DEFAULTS["max_position_embeddings"]),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=config_int(config, "intermediate_size", _DEFAULTS["intermediate_size"]),
        sliding_window=window,
        sliding_layers=sliding,
        rms_norm_eps=norm_eps(config, "rms_norm_eps", 1e-6),
        query_pre_attn_scalar=config_float(config, "query_pre_attn_scalar", _DEFAULTS["query_pre_attn_scalar"]),
        **_rope_fields(config),
        attention_bias=config_bool(config, "attention_bias", False),
        activation=activation,
        tie_word_embeddings=tie,
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=tuple(dict.fromkeys(eos)),
    )


def read_weights(cfg: Gemma3Config, raw: RawWeights) -> tuple[Gemma3Config, LazyWeights]:
    vision = next((key for key in raw.tensors if any(part in key for part in _VISION)), None)
    if vision is not None:
        raise CheckpointError(
            f"{raw.where(vision)}: tensor '{vision}' belongs to Gemma 3's vision tower: only the language model is "
            "supported (save its weights alone, e.g. Gemma3ForCausalLM from text_config)"
        )
    summary = (
        f"model_type=gemma3, num_hidden_layers={cfg.num_layers}, hidden_size={cfg.hidden_size}, "
        f"num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}, "
        f"intermediate_size={cfg.intermediate_size}, vocab_size={cfg.vocab_size}, "
        f"tie_word_embeddings={str(cfg.tie_word_embeddings).lower()}"
    )
    ckpt = CheckpointTensors(raw, prefixes=_PREFIXES, config_summary=summary)
    names = hf_names(cfg)
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    ckpt.check({hf: shape for hf, shape in names.values()}, optional, ())

    for hf, _ in names.values():
        if ckpt.has(hf) and not ckpt.dtype(hf).is_floating_point:
            raise CheckpointError(
                f"{ckpt.where(hf)}: tensor '{ckpt.original[hf]}' has dtype {ckpt.dtype(hf)}, "
                "but only unquantized floating-point weights are supported"
            )

    def f32(hf: str) -> torch.Tensor:
        return ckpt[hf].to(torch.float32).contiguous()

    def multiplier(hf: str) -> torch.Tensor:
        return 1.0 + f32(hf)  # transformers: `1.0 + weight.float()`, the same float32 rounding

    w = LazyWeights()
    for canon, (hf, shape) in names.items():
        if canon == "lm_head.weight":
            continue
        module = re.sub(r"^layers\.\d+\.", "", canon.rsplit(".", 1)[0])  # attn_norm, attn.q, ..., final_norm
        w.add(canon, shape, functools.partial(multiplier if module in _NORMS else f32, hf))
    if not cfg.tie_word_embeddings:
        w.add("lm_head.weight", names["lm_head.weight"][1], functools.partial(f32, "lm_head.weight"))
    else:
        if ckpt.has("lm_head.weight") and not torch.equal(f32("lm_head.weight"), w["tok_embed.weight"]):
            raise CheckpointError(
                f"{ckpt.where('lm_head.weight')}: tensor 'lm_head.weight' differs from "
                f"'{ckpt.original['embed_tokens.weight']}', but config.json has tie_word_embeddings=true"
            )
        w.alias("lm_head.weight", "tok_embed.weight")
    return cfg, w


def hf_names(cfg: Gemma3Config) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Canonical name -> (Hugging Face name without the wrapper's `model.` prefix, expected shape)."""
    C, F, V, D = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    names: dict[str, tuple[str, tuple[int, ...]]] = {"tok_embed.weight": (f"{TOP_NAMES['tok_embed']}.weight", (V, C))}
    for i in range(cfg.num_layers):
        shapes: dict[str, tuple[tuple[int, ...], bool]] = {  # canonical module: (weight shape, has a bias)
            "attn_norm": ((C,), False),
            "attn.q": ((cfg.q_width, C), cfg.attention_bias),
            "attn.k": ((cfg.kv_width, C), cfg.attention_bias),
            "attn.v": ((cfg.kv_width, C), cfg.attention_bias),
            "attn.o": ((C, cfg.q_width), cfg.attention_bias),
            "attn.q_norm": ((D,), False),
            "attn.k_norm": ((D,), False),
            "attn_post_norm": ((C,), False),
            "mlp_norm": ((C,), False),
            "mlp.gate": ((F, C), False),
            "mlp.up": ((F, C), False),
            "mlp.down": ((C, F), False),
            "mlp_post_norm": ((C,), False),
        }
        for canon, (shape, bias) in shapes.items():
            hf = f"layers.{i}.{LAYER_NAMES[canon]}"
            names[f"layers.{i}.{canon}.weight"] = (f"{hf}.weight", shape)
            if bias:
                names[f"layers.{i}.{canon}.bias"] = (f"{hf}.bias", (shape[0],))
    names["final_norm.weight"] = (f"{TOP_NAMES['final_norm']}.weight", (C,))
    names["lm_head.weight"] = (f"{TOP_NAMES['lm_head']}.weight", (V, C))
    return names


def _sliding_layers(config: dict, layers: int) -> tuple[bool, ...]:
    """Which layers slide: `layer_types` where given (as transformers reads it), else every layer but each
    `sliding_window_pattern`-th."""
    layer_types = config.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise CheckpointError(
                f"config.json: 'layer_types' must be a list of {layers} layer types (num_hidden_layers), "
                f"got {layer_types!r}"
            )
        unknown = next((t for t in layer_types if t not in LAYER_TYPES), None)
        if unknown is not None:
            raise CheckpointError(f"config.json: layer_types holds {unknown!r} (supported: {', '.join(LAYER_TYPES)})")
        return tuple(LAYER_TYPES[t] for t in layer_types)
    pattern = config_int(config, "sliding_window_pattern", _DEFAULTS["sliding_window_pattern"])
    return tuple(bool((i + 1) % pattern) for i in range(layers))


def _rope_fields(config: dict) -> dict:
    """The RoPE fields of `Gemma3Config`, from `rope_parameters` per layer type (transformers 5) or from `rope_theta`,
    `rope_local_base_freq` and `rope_scaling` (transformers 4; the scaling applies to the global layers only)."""
    parameters = config.get("rope_parameters")
    if parameters:
        if not isinstance(parameters, dict) or not all(isinstance(parameters.get(k), dict) for k in LAYER_TYPES):
            raise CheckpointError(
                "config.json: rope_parameters must hold an object for each of sliding_attention and full_attention, "
                f"got {parameters!r}"
            )
        local = _one_rope(parameters["sliding_attention"], "rope_parameters.sliding_attention", None)
        global_ = _one_rope(parameters["full_attention"], "rope_parameters.full_attention", None)
    else:
        scaling = config.get("rope_scaling") or {}
        if not isinstance(scaling, dict):
            raise CheckpointError(f"config.json: rope_scaling must be an object, got {scaling!r}")
        local = (config_float(config, "rope_local_base_freq", _DEFAULTS["rope_local_base_freq"]), 1.0)
        global_ = _one_rope(scaling, "rope_scaling", config_float(config, "rope_theta", _DEFAULTS["rope_theta"]))
    return dict(rope_theta_local=local[0], rope_factor_local=local[1], rope_theta_global=global_[0],
                rope_factor_global=global_[1])  # fmt: skip


def _one_rope(rope: dict, where: str, theta: float | None) -> tuple[float, float]:
    """(theta, linear factor) of one kind of layer; `theta` the value from outside the dict (transformers 4)."""
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope_type = rope.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(
            f"config.json: {where}.{type_key}={rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"config.json: {where}.partial_rotary_factor={rope['partial_rotary_factor']!r} "
                              "is not supported")  # fmt: skip
    if "rope_theta" in rope or theta is None:
        theta = config_float(rope, "rope_theta", None, field=f"{where}.rope_theta")
    factor = config_float(rope, "factor", None, field=f"{where}.factor") if rope_type == "linear" else 1.0
    return theta, factor
