"""GPT-2 in MLX: (B, S, C) activations, `mx.fast` attention and layer norm. Reads like
`ane_model/gpt2.py`, from the same canonical config and weights."""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import mlx.nn as nn

from canonical.cache import KVCacheProtocol
from canonical.config import check_positions
from canonical.gpt2 import GPT2Config
from mlx_model.layers import MLP, Attention, build, causal_mask, without_tied_head


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)

    def __call__(self, x: mx.array, mask: mx.array | None, cache: KVCacheProtocol | None, layer: int) -> mx.array:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.layers = [Block(cfg) for _ in range(cfg.num_layers)]
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if not cfg.tie_word_embeddings:  # tied: the head is tok_embed itself (`as_linear`), stored once
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @classmethod
    def from_canonical(
        cls,
        cfg: GPT2Config,
        weights: Mapping[str, object],
        dtype: mx.Dtype = mx.float32,
        bits: int | None = None,
        group_size: int = 64,
        packed: bool = False,
    ) -> GPT2Model:
        """Build from canonical weights; `bits`/`group_size`/`packed` as in `layers.build`."""
        return build(cls(cfg), without_tied_head(cfg, weights), dtype, bits, group_size, packed)

    def hidden_states(self, input_ids: mx.array, cache: KVCacheProtocol | None = None) -> mx.array:
        """input_ids (B, S) -> final-norm hidden states (B, S, C); appends to `cache` if given."""
        seq = input_ids.shape[1]
        offset = 0 if cache is None else cache.offset
        if cache is not None:
            cache.key_length(seq)  # refuse an overflow before any layer writes
        check_positions(self.cfg, offset + seq)
        x = self.tok_embed(input_ids) + self.pos_embed(mx.arange(offset, offset + seq))  # (B, S, C)
        mask = causal_mask(seq, offset)  # (S, Sk) or None for one token
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i)
        if cache is not None:
            cache.advance(seq)
        return self.final_norm(x)

    def __call__(self, input_ids: mx.array, cache: KVCacheProtocol | None = None) -> mx.array:
        """input_ids (B, S) -> logits (B, S, V)."""
        x = self.hidden_states(input_ids, cache)
        return self.tok_embed.as_linear(x) if self.cfg.tie_word_embeddings else self.lm_head(x)
