"""The BERT family (BERT, DistilBERT, sentence-transformers BERT) in MLX. Reads like
`ane_model/bert.py`, from the same canonical config and weights, on (B, S, C) activations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn

from canonical.bert import BertConfig
from canonical.config import check_positions
from mlx_model.layers import ACTIVATIONS, MLP, Attention, build, padding_mask


class BertOutputs(NamedTuple):
    hidden: mx.array  # (B, S, C) last hidden state
    pooled: mx.array | None  # (B, C) BERT pooler (tanh of dense over the first token)
    sentence_embedding: mx.array | None  # (B, C) sentence-transformers pooling (+ normalisation)
    mlm_logits: mx.array | None  # (B, S, V)


class Block(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = Attention(cfg.attention)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attn_norm(x + self.attn(x, mask))  # post-norm residual
        return self.mlp_norm(x + self.mlp(x))


class MLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.decoder(self.norm(self.act(self.dense(x))))


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        if cfg.type_vocab_size:
            self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = [Block(cfg) for _ in range(cfg.num_layers)]
        if cfg.has_pooler:
            self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        if cfg.has_mlm_head:
            self.mlm = MLMHead(cfg)

    @classmethod
    def from_canonical(
        cls,
        cfg: BertConfig,
        weights: Mapping[str, object],
        dtype: mx.Dtype = mx.float32,
        bits: int | None = None,
        group_size: int = 64,
        packed: bool = False,
    ) -> BertModel:
        """Build from canonical weights; `bits`/`group_size`/`packed` as in `layers.build`."""
        return build(cls(cfg), weights, dtype, bits, group_size, packed)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
    ) -> BertOutputs:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, S)."""
        seq = input_ids.shape[1]
        check_positions(self.cfg, seq)
        x = self.tok_embed(input_ids) + self.pos_embed(mx.arange(seq))  # (B, S, C)
        if self.cfg.type_vocab_size:
            types = mx.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.type_embed(types)
        x = self.embed_norm(x)
        if attention_mask is None:
            attention_mask = mx.ones_like(input_ids)
        mask = padding_mask(attention_mask)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)

        return BertOutputs(
            hidden=x,
            pooled=mx.tanh(self.pooler(x[:, 0])) if self.cfg.has_pooler else None,
            sentence_embedding=self._sentence_embedding(x, attention_mask),
            mlm_logits=self.mlm(x) if self.cfg.has_mlm_head else None,
        )

    def _sentence_embedding(self, x: mx.array, attention_mask: mx.array) -> mx.array | None:
        if self.cfg.pooling is None:
            return None
        keep = (attention_mask != 0)[:, :, None]  # (B, S, 1)
        if self.cfg.pooling == "cls":
            pooled = x[:, 0]
        elif self.cfg.pooling == "mean":
            count = mx.maximum(keep.sum(axis=1), 1).astype(x.dtype)
            pooled = mx.where(keep, x, 0).sum(axis=1) / count
        else:
            pooled = mx.where(keep, x, mx.array(-mx.inf, dtype=x.dtype)).max(axis=1)
        if not self.cfg.normalize:
            return pooled
        norm = mx.sqrt((pooled.astype(mx.float32) ** 2).sum(axis=-1, keepdims=True))
        return (pooled / mx.maximum(norm, 1e-12).astype(pooled.dtype)).astype(pooled.dtype)
