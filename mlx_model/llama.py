"""The Llama family (Llama 2/3.x, Mistral, Qwen2, Qwen3, SmolLM2) in MLX: (B, S, C) activations,
`mx.fast` RMSNorm, RoPE and grouped-query attention. Reads like `mlx_model/gpt2.py` and
`ane_model/llama.py`, from the same canonical config and weights.

The dialects differ only in the config's switches: q/k/v biases (Qwen2), an o bias (Llama's
`attention_bias`), RMSNorm of each head's queries and keys (Qwen3), scaled RoPE frequencies (Llama
3.x), a tied head (SmolLM2, small Qwens)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from canonical.cache import KVCacheProtocol
from canonical.llama import LlamaConfig
from mlx_model.causal_lm import CausalLM
from mlx_model.layers import Attention, GatedMLP


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, rope_inv_freq: list[float]):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.attn = Attention(cfg.attention, rope_inv_freq)
        self.mlp_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation, bias=cfg.mlp_bias)

    def __call__(self, x: mx.array, mask: mx.array | None, cache: KVCacheProtocol | None, layer: int) -> mx.array:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(CausalLM):
    def __init__(self, cfg: LlamaConfig):
        super().__init__(cfg)
        rope_inv_freq = cfg.rope_inverse_frequencies()  # computed once, shared by every layer's copy
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [Block(cfg, rope_inv_freq) for _ in range(cfg.num_layers)]
        self.final_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:  # tied: the head is tok_embed itself (`as_linear`), stored once
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
