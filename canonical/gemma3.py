"""The Gemma 3 family's canonical config: the text model of Gemma 3 (270M, 1B, and the language model of the larger
multimodal checkpoints).

Decoder blocks like the Llama family's, with these differences: each block normalises four times (before and after
attention, before and after the MLP, the "sandwich" norms); each head's queries and keys are RMS-normalised; most
layers attend over a sliding window of the last `sliding_window` positions (five of every six in the published
models), each kind of layer with its own RoPE base (1e4 local, 1e6 global); queries are scaled by
`query_pre_attn_scalar ** -0.5` rather than `head_dim ** -0.5`; the token embeddings are multiplied by
sqrt(hidden_size) (rounded to float32, as transformers rounds it); the MLP is gated with GELU (tanh).

Canonical weight names (linear weights `(out, in)`; H heads, G key/value heads of width D). Every norm weight is
the multiplier itself: Gemma's checkpoints store `w` and multiply by `(1 + w)`, and the reader stores `1 + w`
(computed in float32, as transformers computes it), so both backends use a plain RMSNorm::

    tok_embed.weight (V, C)
    layers.{i}.attn_norm.weight (C,)          input_layernorm
    layers.{i}.attn.q.weight (H*D, C)   layers.{i}.attn.k.weight (G*D, C)   layers.{i}.attn.v.weight (G*D, C)
    layers.{i}.attn.o.weight (C, H*D)   layers.{i}.attn.{q,k,v,o}.bias      [attention_bias]
    layers.{i}.attn.q_norm.weight (D,)  layers.{i}.attn.k_norm.weight (D,)
    layers.{i}.attn_post_norm.weight (C,)     post_attention_layernorm
    layers.{i}.mlp_norm.weight (C,)           pre_feedforward_layernorm
    layers.{i}.mlp.gate.weight (F, C)   layers.{i}.mlp.up.weight (F, C)   layers.{i}.mlp.down.weight (C, F)
    layers.{i}.mlp_post_norm.weight (C,)      post_feedforward_layernorm
    final_norm.weight (C,)
    lm_head.weight (V, C)   (the same tensor as tok_embed.weight when tied, as in every published Gemma 3)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Literal

from canonical.attention import AttentionShape
from canonical.config import Activation

LayerKind = Literal["sliding", "global"]


def float32(value: float) -> float:
    """`value` rounded to the nearest float32 (as `torch.tensor(value)` stores it), back as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


@dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    sliding_window: int  # a sliding layer's query at position p sees keys p - sliding_window + 1 .. p
    sliding_layers: tuple[bool, ...]  # per layer: True where it attends over the window, False where globally
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256.0  # queries are scaled by its inverse square root
    rope_theta_global: float = 1_000_000.0
    rope_theta_local: float = 10_000.0
    rope_factor_global: float = 1.0  # linear RoPE scaling (positions divided by it); 1: none
    rope_factor_local: float = 1.0
    attention_bias: bool = False  # biases on q, k, v and o
    activation: Activation = "gelu_tanh"
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    family: ClassVar[str] = "gemma3"
    is_causal: ClassVar[bool] = True
    positions_field: ClassVar[str] = "max_position_embeddings"

    def __post_init__(self) -> None:
        if len(self.sliding_layers) != self.num_layers:
            raise ValueError(f"sliding_layers names {len(self.sliding_layers)} layers, the model has {self.num_layers}")

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def attention(self) -> AttentionShape:
        return AttentionShape(self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                              qkv_bias=self.attention_bias, out_bias=self.attention_bias,
                              qk_norm_eps=self.rms_norm_eps,
                              query_scale=self.query_pre_attn_scalar**-0.5)  # fmt: skip

    @property
    def embed_scale(self) -> float:
        """What the token embeddings are multiplied by: sqrt(hidden_size) as a float32 (transformers keeps it as a
        float32 tensor and casts it to the weights' dtype; a model cast to fp16 or bf16 rounds it once more)."""
        return float32(self.hidden_size**0.5)

    def layer_kind(self, layer: int) -> LayerKind:
        return "sliding" if self.sliding_layers[layer] else "global"

    def rope_inverse_frequencies(self, kind: LayerKind) -> list[float]:
        """The D/2 RoPE frequencies (radians per position) of a sliding or a global layer: theta^(-2i/D), divided by
        the linear scaling factor of that kind of layer."""
        theta, factor = (
            (self.rope_theta_local, self.rope_factor_local)
            if kind == "sliding"
            else (self.rope_theta_global, self.rope_factor_global)
        )
        return [theta ** (-2.0 * i / self.head_dim) / factor for i in range(self.head_dim // 2)]
