"""GPT-2 in the ANE layout: (B, C, 1, S) activations, 1x1-conv projections, split-einsum attention."""

from __future__ import annotations

import torch
from torch import nn

from ane_model.causal_lm import CausalLM
from ane_model.layers import MLP, Attention, ChunkedHead, LayerNormANE
from canonical.cache import KVCacheProtocol
from canonical.gpt2 import GPT2Config


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.attn_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.attn = Attention(cfg.attention)
        self.mlp_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCacheProtocol | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class GPT2Model(CausalLM):
    cfg: GPT2Config
    final_norm: LayerNormANE
    EMBED_AND_HEAD = ("tok_embed", "pos_embed", "final_norm", "lm_head")

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        # Tied (every GPT-2 checkpoint): the head's chunks are the token embedding too, stored once (`embed_tokens`).
        self.tok_embed = None if cfg.tie_word_embeddings else nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.lm_head = ChunkedHead(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids: torch.Tensor, offset) -> torch.Tensor:
        """Token plus learned position embeddings (GPT-2's position table is kept whole in an export)."""
        positions = torch.arange(input_ids.shape[1]) + offset
        x = self.embed_tokens(input_ids) + self.pos_embed(positions)  # (B, S, C)
        return x.transpose(1, 2).unsqueeze(2)  # rule 1: (B, C, 1, S), once, at the input
