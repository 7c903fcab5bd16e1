"""The Llama family's canonical config: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3 and SmolLM2 checkpoints.

Pre-norm decoder blocks with RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU
MLP. The dialects differ only in switches recorded here: biases on q/k/v (Qwen2), RMSNorm of each
head's queries and keys (Qwen3), the RoPE frequency scaling (Llama 3.x), a tied head (SmolLM2, small
Qwens). Canonical weight names (linear weights `(out, in)`; H heads, G key/value heads of width D)::

    tok_embed.weight (V, C)
    layers.{i}.attn_norm.weight (C,)
    layers.{i}.attn.q.weight (H*D, C)   layers.{i}.attn.k.weight (G*D, C)   layers.{i}.attn.v.weight (G*D, C)
    layers.{i}.attn.{q,k,v}.bias                          [attention_bias]
    layers.{i}.attn.o.weight (C, H*D)   layers.{i}.attn.o.bias (C,)   [the bias only with attention_out_bias]
    layers.{i}.attn.q_norm.weight (D,)  layers.{i}.attn.k_norm.weight (D,)   [qk_norm]
    layers.{i}.mlp_norm.weight (C,)
    layers.{i}.mlp.gate.weight (F, C)   layers.{i}.mlp.up.weight (F, C)   layers.{i}.mlp.down.weight (C, F)
    layers.{i}.mlp.{gate,up,down}.bias                   [mlp_bias]
    final_norm.weight (C,)
    lm_head.weight (V, C)   (the same tensor as tok_embed.weight when tied)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from canonical.attention import AttentionShape
from canonical.config import Activation

RopeType = Literal["default", "linear", "llama3"]
Dialect = Literal["llama", "mistral", "qwen2", "qwen3"]  # the Hugging Face model_types read as this family


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: RopeType = "default"
    rope_factor: float = 1.0  # linear and llama3: how much longer than the original context
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_positions: int = 8192  # llama3 only: the context the frequencies were trained at
    attention_bias: bool = False  # biases on q, k and v (Qwen2; Llama's attention_bias)
    attention_out_bias: bool = False  # a bias on o as well (Llama's attention_bias; not Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen3)
    activation: Activation = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dialect: Dialect = "llama"  # Hugging Face's model_type

    family: ClassVar[str] = "llama"
    is_causal: ClassVar[bool] = True
    positions_field: ClassVar[str] = "max_position_embeddings"

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention(self) -> AttentionShape:
        return AttentionShape(self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                              qkv_bias=self.attention_bias, out_bias=self.attention_out_bias,
                              qk_norm_eps=self.rms_norm_eps if self.qk_norm else None)  # fmt: skip

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def rope_inverse_frequencies(self) -> list[float]:
        """The D/2 rotation frequencies of RoPE (radians per position), after the config's scaling.

        `default`: theta^(-2i/D). `linear`: each divided by the factor (positions stretched). `llama3`:
        long wavelengths divided by the factor, short ones kept, a smooth blend between (the recipe of
        transformers' `_compute_llama3_parameters`)."""
        half = self.head_dim // 2
        inv = [self.rope_theta ** (-2.0 * i / self.head_dim) for i in range(half)]
        if self.rope_type == "linear":
            return [f / self.rope_factor for f in inv]
        if self.rope_type == "llama3":
            low_wavelen = self.rope_original_max_positions / self.rope_low_freq_factor
            high_wavelen = self.rope_original_max_positions / self.rope_high_freq_factor
            scaled = []
            for f in inv:
                wavelen = 2 * math.pi / f
                if wavelen < high_wavelen:
                    scaled.append(f)
                elif wavelen > low_wavelen:
                    scaled.append(f / self.rope_factor)
                else:
                    smooth = (self.rope_original_max_positions / wavelen - self.rope_low_freq_factor) / (
                        self.rope_high_freq_factor - self.rope_low_freq_factor
                    )
                    scaled.append((1 - smooth) * f / self.rope_factor + smooth * f)
            return scaled
        return inv
