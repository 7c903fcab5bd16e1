"""GPT-2 checkpoints in Hugging Face layout -> `GPT2Config` + canonical weights.

Quirks handled here and nowhere else: `Conv1D` stores weights as `(in, out)`, so they are transposed;
`c_attn` fuses q, k, v and is split; keys come with (`GPT2LMHeadModel`) or without (`GPT2Model`) the
`transformer.` prefix; `lm_head.weight` is absent when tied to the token embedding."""

from __future__ import annotations

import torch

from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config
from convert.activations import canonical_activation
from convert.hf_common import (
    MAX_NORM_EPS,
    CheckpointTensors,
    check_heads,
    config_bool,
    config_float,
    config_int,
    token_id,
)
from convert.weights import RawWeights

_IGNORED = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")  # causal-mask buffers of old checkpoints


def gpt2_config(config: dict) -> GPT2Config:
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
        layer_norm_eps=config_float(config, "layer_norm_epsilon", 1e-5, maximum=MAX_NORM_EPS),
        activation=canonical_activation(config.get("activation_function", "gelu_new"), "activation_function"),
        bos_token_id=token_id(config, "bos_token_id"),
        eos_token_id=token_id(config, "eos_token_id"),
        tie_word_embeddings=config_bool(config, "tie_word_embeddings", True),
    )


def gpt2_weights(cfg: GPT2Config, raw: RawWeights) -> dict[str, torch.Tensor]:
    summary = (
        f"n_layer={cfg.num_layers}, n_embd={cfg.hidden_size}, n_inner={cfg.intermediate_size}, "
        f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_positions}"
    )
    ckpt = CheckpointTensors(raw, prefixes=("transformer.",), config_summary=summary)
    C, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    expected: dict[str, tuple[int, ...]] = {
        "wte.weight": (V, C),
        "wpe.weight": (cfg.max_positions, C),
        "ln_f.weight": (C,),
        "ln_f.bias": (C,),
        "lm_head.weight": (V, C),
    }
    for i in range(cfg.num_layers):
        h = f"h.{i}"
        expected |= {
            f"{h}.ln_1.weight": (C,), f"{h}.ln_1.bias": (C,),
            f"{h}.attn.c_attn.weight": (C, 3 * C), f"{h}.attn.c_attn.bias": (3 * C,),
            f"{h}.attn.c_proj.weight": (C, C), f"{h}.attn.c_proj.bias": (C,),
            f"{h}.ln_2.weight": (C,), f"{h}.ln_2.bias": (C,),
            f"{h}.mlp.c_fc.weight": (C, F), f"{h}.mlp.c_fc.bias": (F,),
            f"{h}.mlp.c_proj.weight": (F, C), f"{h}.mlp.c_proj.bias": (C,),
        }  # fmt: skip
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    ckpt.check(expected, optional, _IGNORED)

    w = {
        "tok_embed.weight": ckpt["wte.weight"],
        "pos_embed.weight": ckpt["wpe.weight"],
        "final_norm.weight": ckpt["ln_f.weight"],
        "final_norm.bias": ckpt["ln_f.bias"],
        "lm_head.weight": ckpt["lm_head.weight"] if ckpt.has("lm_head.weight") else ckpt["wte.weight"],
    }
    for i in range(cfg.num_layers):
        h, out = f"h.{i}", f"layers.{i}"
        # Conv1D keeps (in, out); canonical linear weights are (out, in).
        q, k, v = ckpt[f"{h}.attn.c_attn.weight"].t().split(C, dim=0)
        qb, kb, vb = ckpt[f"{h}.attn.c_attn.bias"].split(C, dim=0)
        w |= {
            f"{out}.attn_norm.weight": ckpt[f"{h}.ln_1.weight"], f"{out}.attn_norm.bias": ckpt[f"{h}.ln_1.bias"],
            f"{out}.attn.q.weight": q, f"{out}.attn.q.bias": qb,
            f"{out}.attn.k.weight": k, f"{out}.attn.k.bias": kb,
            f"{out}.attn.v.weight": v, f"{out}.attn.v.bias": vb,
            f"{out}.attn.o.weight": ckpt[f"{h}.attn.c_proj.weight"].t(),
            f"{out}.attn.o.bias": ckpt[f"{h}.attn.c_proj.bias"],
            f"{out}.mlp_norm.weight": ckpt[f"{h}.ln_2.weight"], f"{out}.mlp_norm.bias": ckpt[f"{h}.ln_2.bias"],
            f"{out}.mlp.fc1.weight": ckpt[f"{h}.mlp.c_fc.weight"].t(),
            f"{out}.mlp.fc1.bias": ckpt[f"{h}.mlp.c_fc.bias"],
            f"{out}.mlp.fc2.weight": ckpt[f"{h}.mlp.c_proj.weight"].t(),
            f"{out}.mlp.fc2.bias": ckpt[f"{h}.mlp.c_proj.bias"],
        }  # fmt: skip
    return {name: t.contiguous() for name, t in w.items()}
