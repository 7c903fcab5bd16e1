"""GPT-2 checkpoints in Hugging Face layout -> `GPT2Config` + canonical weights.

Quirks handled here and nowhere else: `Conv1D` stores weights as `(in, out)`, so they are transposed;
`c_attn` fuses q, k, v and is split; keys come with (`GPT2LMHeadModel`) or without (`GPT2Model`) the
`transformer.` prefix; `lm_head.weight` is absent when tied to the token embedding."""

from __future__ import annotations

from pathlib import Path

import torch

from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config
from convert.activations import canonical_activation
from convert.hf_common import (
    CheckpointTensors,
    check_heads,
    config_bool,
    config_int,
    norm_eps,
    token_id,
)
from convert.weights import RawWeights

_IGNORED = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")  # causal-mask buffers of old checkpoints


def read_config(config: dict, model_type: str = "gpt2", directory: Path | None = None) -> GPT2Config:
    for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if config.get(flag, ok) != ok:
            raise CheckpointError(f"config.json: {flag}={config[flag]!r} is not supported")
    if not config.get("scale_attn_weights", True):
        raise CheckpointError("config.json: scale_attn_weights=false is not supported")
    hidden = config_int(config, "n_embd", 768)
    heads = config_int(config, "n_head", 12)
    check_heads(hidden, heads, "n_embd", "n_head")
    inner = config.get("n_inner")
    return GPT2Config(
        vocab_size=config_int(config, "vocab_size", 50257),
        max_positions=config_int(config, "n_positions", 1024),
        hidden_size=hidden,
        num_layers=config_int(config, "n_layer", 12),
        num_heads=heads,
        intermediate_size=4 * hidden if inner is None else config_int(config, "n_inner"),
        layer_norm_eps=norm_eps(config, "layer_norm_epsilon", 1e-5),
        activation=canonical_activation(config.get("activation_function", "gelu_new"), "activation_function"),
        bos_token_id=token_id(config, "bos_token_id"),
        eos_token_id=token_id(config, "eos_token_id"),
        tie_word_embeddings=config_bool(config, "tie_word_embeddings", True),
    )


# The family's one name map: canonical module -> Hugging Face module ({i}: the layer), as a `GPT2Model` names them
# (`GPT2LMHeadModel` puts WRAPPER before all but the head; mlx-lm puts `model.` there instead, and
# `convert/mlx_lm_gpt2.py` writes its exports from this map). q, k and v are one fused module, QKV.
NAMES = {
    "tok_embed": "wte",
    "pos_embed": "wpe",
    "final_norm": "ln_f",
    "lm_head": "lm_head",
    "layers.{i}.attn_norm": "h.{i}.ln_1",
    "layers.{i}.attn.o": "h.{i}.attn.c_proj",
    "layers.{i}.mlp_norm": "h.{i}.ln_2",
    "layers.{i}.mlp.fc1": "h.{i}.mlp.c_fc",
    "layers.{i}.mlp.fc2": "h.{i}.mlp.c_proj",
}
QKV = "h.{i}.attn.c_attn"
WRAPPER = "transformer."
# Conv1D keeps its weights (in, out); canonical linear weights are (out, in).
_CONV1D = ("layers.{i}.attn.o", "layers.{i}.mlp.fc1", "layers.{i}.mlp.fc2")


def read_weights(cfg: GPT2Config, raw: RawWeights) -> tuple[GPT2Config, dict[str, torch.Tensor]]:
    summary = (
        f"n_layer={cfg.num_layers}, n_embd={cfg.hidden_size}, n_inner={cfg.intermediate_size}, "
        f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_positions}"
    )
    ckpt = CheckpointTensors(raw, prefixes=(WRAPPER,), config_summary=summary)
    C, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = {  # canonical module -> (weight shape as Hugging Face stores it, or None: a norm; bias shape)
        "tok_embed": ((V, C), None), "pos_embed": ((cfg.max_positions, C), None), "final_norm": ((C,), (C,)),
        "lm_head": ((V, C), None),
        "layers.{i}.attn_norm": ((C,), (C,)), "layers.{i}.attn.o": ((C, C), (C,)),
        "layers.{i}.mlp_norm": ((C,), (C,)), "layers.{i}.mlp.fc1": ((C, F), (F,)), "layers.{i}.mlp.fc2": ((F, C), (C,)),
    }  # fmt: skip
    expected: dict[str, tuple[int, ...]] = {}
    for canon, (weight, bias) in shapes.items():
        for i in range(cfg.num_layers) if "{i}" in canon else [None]:
            module = NAMES[canon].format(i=i)
            expected[f"{module}.weight"] = weight
            if bias is not None:
                expected[f"{module}.bias"] = bias
    for i in range(cfg.num_layers):
        expected |= {f"{QKV.format(i=i)}.weight": (C, 3 * C), f"{QKV.format(i=i)}.bias": (3 * C,)}
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    ckpt.check(expected, optional, _IGNORED)

    w: dict[str, torch.Tensor] = {}
    for canon, module in NAMES.items():
        for i in range(cfg.num_layers) if "{i}" in canon else [None]:
            name, hf = canon.format(i=i), module.format(i=i)
            for leaf in ("weight", "bias"):
                if ckpt.has(f"{hf}.{leaf}"):
                    tensor = ckpt[f"{hf}.{leaf}"]
                    w[f"{name}.{leaf}"] = tensor.t() if leaf == "weight" and canon in _CONV1D else tensor
    if "lm_head.weight" not in w:  # tied: the token embedding
        w["lm_head.weight"] = w["tok_embed.weight"]
    for i in range(cfg.num_layers):
        q, k, v = ckpt[f"{QKV.format(i=i)}.weight"].t().split(C, dim=0)
        qb, kb, vb = ckpt[f"{QKV.format(i=i)}.bias"].split(C, dim=0)
        w |= {
            f"layers.{i}.attn.{p}.{leaf}": t
            for p, pair in zip("qkv", ((q, qb), (k, kb), (v, vb)), strict=True)
            for leaf, t in zip(("weight", "bias"), pair, strict=True)
        }
    return cfg, {name: t.contiguous() for name, t in w.items()}
