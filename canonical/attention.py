"""The attention a config implies, written once for both backends' `Attention` (`ane_model/layers.py`,
`mlx_model/layers.py`): H query heads of width D sharing G key/value heads (grouped-query attention when G < H),
which projections carry biases, whether each head's queries and keys are RMS-normalised first (Qwen3, Gemma 3),
and the query scale where it is not 1/sqrt(head width) (Gemma 3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionShape:
    hidden: int  # the width attention reads and writes
    num_heads: int  # H
    num_kv_heads: int  # G, dividing H
    head_dim: int  # D, not necessarily hidden / H
    qkv_bias: bool = True
    out_bias: bool = True
    qk_norm_eps: float | None = None  # an RMSNorm of each head's queries and keys, with this epsilon
    query_scale: float | None = None  # what queries are multiplied by before the product; None: head_dim ** -0.5

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads cannot share {self.num_kv_heads} key/value heads evenly")

    @classmethod
    def multi_head(cls, hidden: int, num_heads: int) -> AttentionShape:
        """GPT-2's and BERT's: as many key/value heads as heads, of width hidden / heads, biases everywhere."""
        return cls(hidden, num_heads, num_heads, hidden // num_heads)

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def scale(self) -> float:
        """The query scale: 1/sqrt(head_dim), unless the family sets its own (Gemma 3: query_pre_attn_scalar)."""
        return self.head_dim**-0.5 if self.query_scale is None else self.query_scale
