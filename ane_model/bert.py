"""The BERT family (BERT, DistilBERT, sentence-transformers BERT) in the ANE layout."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ane_model.layers import (
    MASK_VALUE,
    MLP,
    Attention,
    ChunkedHead,
    LayerNormANE,
    activation_fn,
    conv_linear,
    load_canonical,
    padding_mask,
    without_random_init,
)
from canonical.bert import BertConfig
from canonical.config import check_positions


class BertOutputs(NamedTuple):
    hidden: torch.Tensor  # (B, C, 1, S) last hidden state
    pooled: torch.Tensor | None  # (B, C) BERT pooler (tanh of dense over the first token)
    sentence_embedding: torch.Tensor | None  # (B, C) sentence-transformers pooling (+ normalisation)
    mlm_logits: torch.Tensor | None  # (B, V, 1, S)


class Block(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = Attention(cfg.attention)
        self.attn_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)
        self.mlp_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask))  # post-norm residual
        return self.mlp_norm(x + self.mlp(x))


class MLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = conv_linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation_fn(cfg.activation)
        self.norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.decoder = ChunkedHead(cfg.hidden_size, cfg.vocab_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))

    def forward_chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits as the head's chunks (rule 7), for exports where one (B, V, 1, S) is too wide."""
        return self.decoder.forward_chunks(self.norm(self.act(self.dense(x))))


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.embed_norm = LayerNormANE(cfg.hidden_size, cfg.layer_norm_eps)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.has_pooler else None
        self.mlm = MLMHead(cfg) if cfg.has_mlm_head else None

    @classmethod
    def from_canonical(cls, cfg: BertConfig, weights: dict[str, torch.Tensor]) -> BertModel:
        with without_random_init():
            model = cls(cfg)
        named = {k: v for k, v in weights.items() if not k.startswith("mlm.decoder.")}
        if model.mlm is not None:
            named |= model.mlm.decoder.canonical_to_chunks("mlm.decoder", weights)
        load_canonical(model, named)
        return model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> BertOutputs:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, S)."""
        seq = input_ids.shape[1]
        check_positions(self.cfg, seq)
        x = self.tok_embed(input_ids) + self.pos_embed(torch.arange(seq))  # (B, S, C)
        if self.type_embed is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.type_embed(types)
        x = self.embed_norm(x.transpose(1, 2).unsqueeze(2))  # rule 1: (B, C, 1, S), once, at the input
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = padding_mask(attention_mask, x.dtype)  # (B, S, 1, S)
        for layer in self.layers:
            x = layer(x, mask)

        pooled = torch.tanh(self.pooler(x[:, :, 0, 0])) if self.pooler is not None else None
        return BertOutputs(
            hidden=x,
            pooled=pooled,
            sentence_embedding=self._sentence_embedding(x, attention_mask),
            mlm_logits=self.mlm(x) if self.mlm is not None else None,
        )

    def mlm_logit_chunks(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """The MLM logits as the head's chunks (rule 7), for exports where one (B, V, 1, S) is too wide."""
        if self.mlm is None:
            raise ValueError("this model has no MLM head (has_mlm_head is false)")
        return self.mlm.forward_chunks(hidden)

    def _sentence_embedding(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.pooling is None:
            return None
        keep = attention_mask.to(x.dtype).unsqueeze(1)  # (B, 1, S)
        tokens = x.squeeze(2)  # (B, C, S)
        if self.cfg.pooling == "cls":
            pooled = tokens[:, :, 0]
        elif self.cfg.pooling == "mean":
            pooled = (tokens * keep).sum(dim=2) / keep.sum(dim=2).clamp_min(1.0)
        else:
            pooled = (tokens + (1.0 - keep) * MASK_VALUE).amax(dim=2)
        return F.normalize(pooled, dim=1) if self.cfg.normalize else pooled
