"""Gemma 3 (text) in MLX: (B, S, C) activations, `mx.fast` RMSNorm (four per block and per-head q/k norms), RoPE with
a base of its own for the local and the global layers, grouped-query attention whose sliding layers see a window of
keys through their mask, a GELU-gated MLP. Reads like `ane_model/gemma3.py`, from the same canonical config and
weights.

Norms as mlx-lm's gemma3_text computes them: the parameter is `w` and the multiplier `1 + w` is formed at run time in
the weights' dtype (the canonical weights hold `1 + w`; `from_canonical` takes the 1 off in float32, exact). So this
model and an export that mlx-lm loads hold the same numbers in every dtype, and an fp16 export reads back exactly
(`w` in fp16 keeps bits that `1 + w` in fp16 would round away).

No scaled residual stream here (the ANE model's fp16 guard): MLX runs Gemma in fp32 or bf16, whose range holds its
activations; fp16 on MLX would need the same guard."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import mlx.core as mx
import mlx.nn as nn

from canonical.cache import KVCacheProtocol
from canonical.gemma3 import Gemma3Config
from mlx_model.causal_lm import CausalLM
from mlx_model.layers import Attention, GatedMLP, causal_mask, to_mx

# canonical names of the norms (multipliers 1 + w): held here as w
NORMS = re.compile(r"(layers\.\d+\.(attn_norm|attn\.q_norm|attn\.k_norm|attn_post_norm|mlp_norm|mlp_post_norm)"
                   r"|final_norm)\.weight")  # fmt: skip


class GemmaNorm(nn.Module):
    """RMSNorm whose parameter `weight` is w, multiplying by 1 + w (formed in the weights' dtype, as mlx-lm does)."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer: int, rope_inv_freq: list[float]):
        super().__init__()
        C, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sliding = cfg.sliding_layers[layer]
        self.attn_norm = GemmaNorm(C, eps)
        self.attn = Attention(cfg.attention, rope_inv_freq)
        self.attn.q_norm = GemmaNorm(cfg.head_dim, eps)  # its q/k norms are Gemma's too (1 + w)
        self.attn.k_norm = GemmaNorm(cfg.head_dim, eps)
        self.attn_post_norm = GemmaNorm(C, eps)
        self.mlp_norm = GemmaNorm(C, eps)
        self.mlp = GatedMLP(C, cfg.intermediate_size, cfg.activation)
        self.mlp_post_norm = GemmaNorm(C, eps)

    def __call__(
        self,
        x: mx.array,
        mask: mx.array | None,
        cache: KVCacheProtocol | None,
        layer: int,
        sliding_mask: mx.array | None,
    ) -> mx.array:
        if self.sliding:
            mask = sliding_mask
        x = x + self.attn_post_norm(self.attn(self.attn_norm(x), mask, cache, layer))  # sandwich norms
        return x + self.mlp_post_norm(self.mlp(self.mlp_norm(x)))


class Gemma3Model(CausalLM):
    def __init__(self, cfg: Gemma3Config):
        super().__init__(cfg)
        frequencies = {kind: cfg.rope_inverse_frequencies(kind) for kind in ("global", "sliding")}
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [Block(cfg, i, frequencies[cfg.layer_kind(i)]) for i in range(cfg.num_layers)]
        self.final_norm = GemmaNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:  # tied: the head is tok_embed itself (`as_linear`), stored once
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @classmethod
    def from_canonical(cls, cfg, weights, dtype=mx.float32, bits=None, group_size=64, packed=False):
        """As every causal LM, with each norm's `1 + w` read as w (the 1 taken off in float32)."""
        return super().from_canonical(cfg, _NormsAsOffsets(weights), dtype, bits, group_size, packed)

    def embed(self, input_ids: mx.array, offset: int) -> mx.array:
        """Token embeddings times sqrt(hidden), the float32 scale rounded to the activations' dtype (as transformers
        rounds it to the weights')."""
        x = self.tok_embed(input_ids)
        return x * mx.array(self.cfg.embed_scale, dtype=mx.float32).astype(x.dtype)

    def layer_inputs(self, seq: int, offset: int) -> tuple:
        """The sliding layers' mask: causal, and no further back than the window (the cache keeps every position)."""
        return (causal_mask(seq, offset, window=self.cfg.sliding_window),)


class _NormsAsOffsets(Mapping[str, object]):
    """Canonical weights with each norm's multiplier `1 + w` read as w, in float32; the rest read through."""

    def __init__(self, weights: Mapping[str, object]):
        self.weights = weights

    def __getitem__(self, name: str) -> object:
        tensor = self.weights[name]
        return to_mx(tensor, mx.float32) - 1.0 if NORMS.fullmatch(name) else tensor

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self.weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)
