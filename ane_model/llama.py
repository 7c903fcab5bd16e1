"""The Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2) in the ANE layout: (B, C, 1, S)
activations, RMSNorm over channels, RoPE from precomputed tables, grouped-query split-einsum attention
whose KV cache holds only the key/value heads, and a SwiGLU MLP of 1x1 convs."""

from __future__ import annotations

import torch
from torch import nn

from ane_model.causal_lm import CausalLM
from ane_model.layers import Attention, ChunkedHead, RMSNormANE, RotaryEmbedding, SwiGLU
from canonical.cache import KVCacheProtocol
from canonical.llama import LlamaConfig


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg.attention)
        self.mlp_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.activation, bias=cfg.mlp_bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCacheProtocol | None,
        layer: int,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer, rope)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(CausalLM):
    cfg: LlamaConfig

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        # Tied (SmolLM2, small Qwens): the head's chunks are the token embedding too, stored once (`embed_tokens`).
        self.tok_embed = None if cfg.tie_word_embeddings else nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.rope_inverse_frequencies(), cfg.max_positions)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps)
        # rule 7: Qwen's 151,936-token vocabulary is ten chunks of <= 16384
        self.lm_head = ChunkedHead(cfg.hidden_size, cfg.vocab_size, bias=False)

    def layer_inputs(self, seq: int, offset, dtype: torch.dtype) -> tuple:
        """The RoPE tables of positions offset .. offset + seq - 1, tiled over the query heads, once per forward and
        shared by every layer."""
        cos, sin = self.rotary(seq, offset, self.cfg.num_heads)
        return ((cos.to(dtype), sin.to(dtype)),)

    def limit_positions(self, positions: int) -> None:
        """Export for a context of `positions` tokens: the RoPE tables keep those rows only."""
        self.rotary.limit(positions)
