"""GPT-2's canonical config. Canonical weight names (every linear weight is `(out, in)`, as in `nn.Linear`)::

tok_embed.weight (V, C)        pos_embed.weight (P, C)
layers.{i}.attn_norm.{weight,bias}
layers.{i}.attn.{q,k,v,o}.{weight,bias}
layers.{i}.mlp_norm.{weight,bias}
layers.{i}.mlp.{fc1,fc2}.{weight,bias}
final_norm.{weight,bias}
lm_head.weight (V, C)   (the same tensor as tok_embed.weight when tied)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from canonical.config import Activation, EqualHeads


@dataclass(frozen=True)
class GPT2Config(EqualHeads):
    layer_norm_eps: float = 1e-5
    activation: Activation = "gelu_tanh"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True

    family: ClassVar[str] = "gpt2"
    is_causal: ClassVar[bool] = True
    positions_field: ClassVar[str] = "n_positions"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return () if self.eos_token_id is None else (self.eos_token_id,)
