"""The BERT family's canonical config (BERT, DistilBERT, sentence-transformers BERT checkpoints).

Canonical weight names::

    tok_embed.weight (V, C)   pos_embed.weight (P, C)   type_embed.weight (T, C)  [only when T > 0]
    embed_norm.{weight,bias}
    layers.{i}.attn.{q,k,v,o}.{weight,bias}
    layers.{i}.attn_norm.{weight,bias}      (post-norm: after the attention residual)
    layers.{i}.mlp.{fc1,fc2}.{weight,bias}
    layers.{i}.mlp_norm.{weight,bias}       (post-norm: after the MLP residual)
    pooler.{weight,bias}                                       [has_pooler]
    mlm.dense.{weight,bias} mlm.norm.{weight,bias} mlm.decoder.{weight,bias}   [has_mlm_head]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from canonical.config import Activation, EqualHeads

Pooling = Literal["cls", "mean", "max"]


@dataclass(frozen=True)
class BertConfig(EqualHeads):
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: Activation = "gelu"
    pad_token_id: int = 0
    dialect: Literal["bert", "distilbert"] = "bert"  # which Hugging Face layout the weights came from
    has_pooler: bool = False
    has_mlm_head: bool = False
    # sentence-transformers pooling (modules.json / 1_Pooling); None for plain checkpoints.
    pooling: Pooling | None = None
    normalize: bool = False

    family: ClassVar[str] = "bert"
    is_causal: ClassVar[bool] = False
    positions_field: ClassVar[str] = "max_position_embeddings"
