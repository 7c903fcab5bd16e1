"""GPT-2 in MLX: (B, S, C) activations, `mx.fast` attention and layer norm. Reads like
`ane_model/gpt2.py`, from the same canonical config and weights."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from canonical.cache import KVCacheProtocol
from canonical.gpt2 import GPT2Config
from mlx_model.causal_lm import CausalLM
from mlx_model.layers import MLP, Attention


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.attention)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)

    def __call__(self, x: mx.array, mask: mx.array | None, cache: KVCacheProtocol | None, layer: int) -> mx.array:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class GPT2Model(CausalLM):
    def __init__(self, cfg: GPT2Config):
        super().__init__(cfg)
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.layers = [Block(cfg) for _ in range(cfg.num_layers)]
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if not cfg.tie_word_embeddings:  # tied: the head is tok_embed itself (`as_linear`), stored once
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids: mx.array, offset: int) -> mx.array:
        """Token plus learned position embeddings (B, S, C)."""
        return self.tok_embed(input_ids) + self.pos_embed(mx.arange(offset, offset + input_ids.shape[1]))
