"""GPT-2 in the ANE layout: (B, C, 1, S) activations, 1x1-conv projections, split-einsum attention."""

from __future__ import annotations

import torch
from torch import nn

from ane_model.layers import MLP, Attention, ChunkedHead, LayerNormANE, causal_mask, load_causal_lm
from canonical.cache import KVCacheProtocol
from canonical.config import check_positions
from canonical.gpt2 import GPT2Config


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.attn_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCacheProtocol | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        # Tied (every GPT-2 checkpoint): the head's chunks are the token embedding too, stored once (`embed_tokens`).
        self.tok_embed = None if cfg.tie_word_embeddings else nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.lm_head = ChunkedHead(cfg.hidden_size, cfg.vocab_size, bias=False)

    @classmethod
    def from_canonical(cls, cfg: GPT2Config, weights: dict[str, torch.Tensor]) -> GPT2Model:
        """Tied (as transformers ties it): the head is `tok_embed.weight`, whatever `lm_head.weight` holds."""
        return load_causal_lm(cls(cfg), weights)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, S, C): rows of the head's chunks when tied, of `tok_embed` otherwise."""
        return self.lm_head.embed(input_ids) if self.tok_embed is None else self.tok_embed(input_ids)

    def layer_inputs(self, seq: int, offset, dtype: torch.dtype) -> tuple:
        """What a block takes besides (x, mask, cache, layer): nothing for GPT-2 (positions are embedded)."""
        return ()

    def limit_positions(self, positions: int) -> None:
        """Export for a context of `positions` tokens: GPT-2's learned position table is kept whole."""

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> final-norm hidden states (B, C, 1, S); appends to `cache` if given."""
        seq = input_ids.shape[1]
        offset = 0 if cache is None else cache.offset
        key_len = seq if cache is None else cache.key_length(seq)
        check_positions(self.cfg, offset + seq)
        positions = torch.arange(seq) + offset
        x = self.embed_tokens(input_ids) + self.pos_embed(positions)  # (B, S, C)
        x = x.transpose(1, 2).unsqueeze(2)  # rule 1: (B, C, 1, S), once, at the input
        mask = causal_mask(seq, key_len, offset, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i)
        if cache is not None:
            cache.advance(seq)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> logits (B, V, 1, S)."""
        return self.lm_head(self.hidden_states(input_ids, cache))
