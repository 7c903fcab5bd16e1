"""Gemma 3 (text) in the ANE layout: (B, C, 1, S) activations, four RMSNorms over channels per block, per-head q/k
RMSNorm, RoPE from two precomputed tables (local and global layers have their own base), grouped-query split-einsum
attention (rule 3) whose sliding layers see a window of keys through their mask, and a GELU-gated MLP of 1x1 convs
(rule 2).

Rule 6, the scaled residual stream. Gemma's residual activations outgrow fp16 (peaks near 104,000 in the 270M model,
above fp16's 65,504), so this model carries the residual stream divided by RESIDUAL_SCALE = k, a power of two. Of
every sum x_{l+1} = x_l + post_norm(f(pre_norm(x_l))), it keeps x_l / k, exactly:
  - the embeddings are multiplied by embed_scale / k instead of embed_scale;
  - the norms that read the stream (each block's two pre-norms and the final norm) take x/k and return the norm of
    x: RMSNorm(x) = (x/k) / sqrt(mean((x/k)^2) + eps/k^2) * w (`RMSNormANE`'s `input_scale`), eps divided by k^2;
  - the norms that write to it (the two post-norms) multiply by w/k instead of w (their weights are divided by k when
    loaded; their input, the attention's or the MLP's output, is not scaled).
Each line is an identity, and k being a power of two, dividing by it is exact in binary floating point (short of
underflow), so in fp32 this model computes the reference's numbers, and in fp16 its residual peaks are k times
smaller (tests/test_gemma3.py plants 100,000-sized activations)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import cast

import torch
from torch import nn

from ane_model.causal_lm import CausalLM
from ane_model.layers import (
    Attention,
    ChunkedHead,
    RMSNormANE,
    RotaryEmbedding,
    SwiGLU,
    causal_mask,
    load_causal_lm,
)
from ane_model.static_cache import StaticKVCache, WindowStaticKVCache
from canonical.cache import KVCacheProtocol
from canonical.gemma3 import Gemma3Config

# k above: 2^6 brings the 270M model's ~104,000 peaks to ~1,600, leaving fp16 a further 40x of headroom, while an
# embedding element of 0.01 stays above fp16's smallest normal number (6.1e-5) after the division.
RESIDUAL_SCALE = 64.0

_POST_NORMS = re.compile(r"layers\.\d+\.(attn_post_norm|mlp_post_norm)\.weight")


class Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer: int, residual_scale: float):
        super().__init__()
        C, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sliding = cfg.sliding_layers[layer]
        self.attn_norm = RMSNormANE(C, eps, input_scale=residual_scale)  # reads the scaled stream
        self.attn = Attention(cfg.attention)
        self.attn_post_norm = RMSNormANE(C, eps)  # writes to it: weight / k (`_ScaledPostNorms`)
        self.mlp_norm = RMSNormANE(C, eps, input_scale=residual_scale)
        self.mlp = SwiGLU(C, cfg.intermediate_size, cfg.activation)
        self.mlp_post_norm = RMSNormANE(C, eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCacheProtocol | None,
        layer: int,
        rope_global: tuple[torch.Tensor, torch.Tensor],
        rope_local: tuple[torch.Tensor, torch.Tensor],
        sliding_mask: torch.Tensor,
    ) -> torch.Tensor:
        if self.sliding:
            mask, rope = sliding_mask, rope_local
        else:
            rope = rope_global
        x = x + self.attn_post_norm(self.attn(self.attn_norm(x), mask, cache, layer, rope))  # sandwich norms
        return x + self.mlp_post_norm(self.mlp(self.mlp_norm(x)))


class Gemma3Model(CausalLM):
    cfg: Gemma3Config
    embed_scale: torch.Tensor  # buffer

    def __init__(self, cfg: Gemma3Config, residual_scale: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.residual_scale = RESIDUAL_SCALE if residual_scale is None else residual_scale
        # Tied (every published Gemma 3): the head's chunks are the token embedding too, stored once.
        self.tok_embed = None if cfg.tie_word_embeddings else nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # A buffer, so that a model cast to fp16 rounds it as transformers rounds its float32 scale to the weights'
        # dtype (dividing by a power of two commutes with the rounding).
        self.register_buffer("embed_scale", torch.tensor(cfg.embed_scale / self.residual_scale), persistent=False)
        self.rotary_global = RotaryEmbedding(cfg.rope_inverse_frequencies("global"), cfg.max_positions)
        self.rotary_local = RotaryEmbedding(cfg.rope_inverse_frequencies("sliding"), cfg.max_positions)
        self.layers = nn.ModuleList(Block(cfg, i, self.residual_scale) for i in range(cfg.num_layers))
        self.final_norm = RMSNormANE(cfg.hidden_size, cfg.rms_norm_eps, input_scale=self.residual_scale)
        # rule 7: Gemma's 262,144-token vocabulary is sixteen chunks of 16,384
        self.lm_head = ChunkedHead(cfg.hidden_size, cfg.vocab_size, bias=False)

    @classmethod
    def from_canonical(cls, cfg, weights: Mapping[str, torch.Tensor]) -> CausalLM:
        """As every causal LM, with the post-norms' weights divided by k as they are loaded (the scaled stream)."""
        model = cast(Gemma3Model, cls.unloaded(cfg))
        return load_causal_lm(model, _ScaledPostNorms(weights, 1.0 / model.residual_scale))

    def load_part(self, weights: Mapping[str, torch.Tensor], modules: tuple[str, ...]) -> None:
        super().load_part(_ScaledPostNorms(weights, 1.0 / self.residual_scale), modules)

    def embed(self, input_ids: torch.Tensor, offset) -> torch.Tensor:
        """Token embeddings times sqrt(hidden) / k (the scaled stream), (B, C, 1, S)."""
        return super().embed(input_ids, offset) * self.embed_scale

    def layer_inputs(self, seq: int, offset, dtype: torch.dtype) -> tuple:
        """The global and the local layers' RoPE tables for positions offset .. offset + seq - 1, tiled over the
        query heads, once per forward."""
        tables = []
        for rotary in (self.rotary_global, self.rotary_local):
            cos, sin = rotary(seq, offset, self.cfg.num_heads)
            tables.append((cos.to(dtype), sin.to(dtype)))
        return tuple(tables)

    def mask_inputs(self, seq: int, key_len, offset, dtype: torch.dtype, cache: KVCacheProtocol | None = None) -> tuple:
        """The sliding layers' mask: causal, and no further back than the window; over the ring of a Core ML
        package's window cache (`WindowStaticKVCache`) where there is one, over every position otherwise."""
        if isinstance(cache, WindowStaticKVCache):
            return (cache.window_mask(seq, dtype),)
        return (causal_mask(seq, key_len, offset, dtype, window=self.cfg.sliding_window),)

    def _window_slots(self, context: int, longest_call: int) -> int | None:
        """The sliding layers' ring: window + the longest call (`WindowStaticKVCache`), where that is shorter than the
        context and both kinds of layer are there; None: every layer keeps the whole context."""
        slots = self.cfg.sliding_window + longest_call
        if slots >= context or all(self.cfg.sliding_layers) or not any(self.cfg.sliding_layers):
            return None
        return slots

    def static_cache_shapes(self, context: int, longest_call: int) -> dict[str, tuple[int, ...]]:
        """The global layers' keys and values over the context, the sliding layers' over their ring of slots: at Gemma
        3 270M's 5 sliding layers of 6 and a 512-token window, a 4,096-token context's cache is ~3.5x smaller."""
        slots = self._window_slots(context, longest_call)
        if slots is None:
            return super().static_cache_shapes(context, longest_call)
        sliding, width = sum(self.cfg.sliding_layers), self.cfg.kv_width
        full, ring = (self.cfg.num_layers - sliding, width, 1, context), (sliding, width, 1, slots)
        return {"keys": full, "values": full, "window_keys": ring, "window_values": ring}

    def static_cache(self, tensors: dict[str, torch.Tensor], position: torch.Tensor):
        if "window_keys" not in tensors:
            return super().static_cache(tensors, position)
        return WindowStaticKVCache(
            StaticKVCache(tensors["keys"], tensors["values"], position),
            StaticKVCache(tensors["window_keys"], tensors["window_values"], position, ring=True),
            self.cfg.sliding_layers,
            self.cfg.sliding_window,
        )

    def limit_positions(self, positions: int) -> None:
        """Export for a context of `positions` tokens: both RoPE tables keep those rows only."""
        self.rotary_global.limit(positions)
        self.rotary_local.limit(positions)


class _ScaledPostNorms(Mapping[str, torch.Tensor]):
    """Canonical weights with the post-norms' weights multiplied by `factor` (1/k: the scaled residual stream), read
    through (nothing copied but the scaled norms, when asked for)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], factor: float):
        self.weights, self.factor = weights, factor

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.weights[name]
        return tensor * self.factor if _POST_NORMS.fullmatch(name) else tensor

    def __contains__(self, name: object) -> bool:  # without reading the tensor (lazy weights read from disk)
        return name in self.weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)
