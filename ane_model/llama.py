"""The Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2) in the ANE layout: (B, C, 1, S)
activations, RMSNorm over channels, RoPE from precomputed tables, grouped-query split-einsum attention
whose KV cache holds only the key/value heads, and a SwiGLU MLP of 1x1 convs."""

from __future__ import annotations

import torch
from torch import nn

from ane_model.layers import (
    Attention,
    ChunkedHead,
    RMSNormANE,
    RotaryEmbedding,
    SwiGLU,
    causal_mask,
    load_causal_lm,
)
from canonical.cache import KVCacheProtocol
from canonical.config import check_positions
from canonical.llama import LlamaConfig


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                              qkv_bias=cfg.attention_bias, out_bias=cfg.attention_out_bias,
                              qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None)
        self.mlp_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.activation, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCacheProtocol | None, layer: int,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache, layer, rope)  # pre-norm residual
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
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

    @classmethod
    def from_canonical(cls, cfg: LlamaConfig, weights: dict[str, torch.Tensor]) -> LlamaModel:
        """A tied head (SmolLM2, small Qwens) is filled from `tok_embed.weight` and serves as the embedding."""
        return load_causal_lm(cls(cfg), weights)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, S, C): rows of the head's chunks when tied, of `tok_embed` otherwise."""
        return self.lm_head.embed(input_ids) if self.tok_embed is None else self.tok_embed(input_ids)

    def layer_inputs(self, seq: int, offset, dtype: torch.dtype) -> tuple:
        """What a block takes besides (x, mask, cache, layer): the RoPE tables of positions offset .. offset +
        seq - 1, tiled over the query heads, once per forward and shared by every layer."""
        cos, sin = self.rotary(seq, offset, self.cfg.num_heads)
        return ((cos.to(dtype), sin.to(dtype)),)

    def limit_positions(self, positions: int) -> None:
        """Export for a context of `positions` tokens: the RoPE tables keep those rows only."""
        self.rotary.limit(positions)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> final-norm hidden states (B, C, 1, S); appends to `cache` if given."""
        seq = input_ids.shape[1]
        offset = 0 if cache is None else cache.offset
        key_len = seq if cache is None else cache.key_length(seq)
        check_positions(self.cfg, offset + seq)
        x = self.embed_tokens(input_ids).transpose(1, 2).unsqueeze(2)  # rule 1: (B, C, 1, S), once, at the input
        mask = causal_mask(seq, key_len, offset, x.dtype)
        extras = self.layer_inputs(seq, offset, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i, *extras)
        if cache is not None:
            cache.advance(seq)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> logits (B, V, 1, S)."""
        return self.lm_head(self.hidden_states(input_ids, cache))
