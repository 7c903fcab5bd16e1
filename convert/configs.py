"""Canonical configs: the only description of a model that `ane_model/` and `mlx_model/` see.

Hugging Face spells the same hyper-parameter differently per architecture (`n_embd`, `hidden_size`,
`dim`); the readers in `convert/hf_*.py` translate once, into these dataclasses.

Canonical weight names (every linear weight is `(out, in)`, as in `nn.Linear`):

GPT-2 (`GPT2Config`)::

    tok_embed.weight (V, C)        pos_embed.weight (P, C)
    layers.{i}.attn_norm.{weight,bias}
    layers.{i}.attn.{q,k,v,o}.{weight,bias}
    layers.{i}.mlp_norm.{weight,bias}
    layers.{i}.mlp.{fc1,fc2}.{weight,bias}
    final_norm.{weight,bias}
    lm_head.weight (V, C)   (the same tensor as tok_embed.weight when tied)

BERT family (`BertConfig`: BERT, DistilBERT, sentence-transformers BERT checkpoints)::

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

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Pooling = Literal["cls", "mean", "max"]


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-5
    activation: Activation = "gelu_tanh"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True

    family: ClassVar[str] = "gpt2"
    is_causal: ClassVar[bool] = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: Activation = "gelu"
    pad_token_id: int = 0
    source_architecture: Literal["bert", "distilbert"] = "bert"
    has_pooler: bool = False
    has_mlm_head: bool = False
    # sentence-transformers pooling (modules.json / 1_Pooling); None for plain checkpoints.
    pooling: Pooling | None = None
    normalize: bool = False

    family: ClassVar[str] = "bert"
    is_causal: ClassVar[bool] = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


ModelConfig = GPT2Config | BertConfig
