"""The torch modules that `torch.export` sees when we write a Core ML package: thin wrappers around
the ANE-layout models that fix the input/output names and shapes of the package.

Names are the package's public interface (an app binds to them), so they live here, once."""

from __future__ import annotations

import torch
from torch import nn

from ane_model import GPT2, BertEncoder
from ane_model.static_cache import StaticKVCache

INPUT_IDS = "input_ids"
POSITION = "position"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
KEY_CACHE = "key_cache"
VALUE_CACHE = "value_cache"
KEY_CACHE_OUT = "key_cache_out"
VALUE_CACHE_OUT = "value_cache_out"
HIDDEN = "last_hidden_state"
POOLED = "pooler_output"
SENTENCE_EMBEDDING = "sentence_embedding"
# Core ML state must be fp16 (coremltools casts any other buffer dtype); the io cache matches it.
CACHE_DTYPE = torch.float16


def logits_names(prefix: str, count: int) -> list[str]:
    """One output per head chunk (rule 7): a concatenated (1, V, 1, S) would exceed the ANE's limit."""
    return [f"{prefix}_{j}" for j in range(count)]


def cache_shape(model: GPT2, context: int) -> tuple[int, int, int, int]:
    cfg = model.cfg
    return (cfg.num_layers, cfg.hidden_size, 1, context)  # rule 1: (L, C, 1, T), sequence last


class GPT2WithState(nn.Module):
    """Causal LM whose KV cache is Core ML state (iOS 18+): every registered buffer of an exported
    program becomes a `ct.StateType`, read at the start and written back in place (rule 8)."""

    def __init__(self, model: GPT2, context: int):
        super().__init__()
        self.model = model
        self.register_buffer(KEY_CACHE, torch.zeros(cache_shape(model, context), dtype=CACHE_DTYPE))
        self.register_buffer(VALUE_CACHE, torch.zeros(cache_shape(model, context), dtype=CACHE_DTYPE))

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.model.tok_embed.weight.dtype
        cache = StaticKVCache(self.key_cache.to(dtype), self.value_cache.to(dtype), position)
        hidden = self.model.hidden_states(input_ids, cache)  # (1, C, 1, S)
        self.key_cache.copy_(cache.new_keys.to(CACHE_DTYPE))
        self.value_cache.copy_(cache.new_values.to(CACHE_DTYPE))
        return tuple(self.model.lm_head.forward_chunks(hidden))  # each (1, V_j, 1, S)


class GPT2WithIOCache(nn.Module):
    """Causal LM whose KV cache is passed in and returned (iOS 16/17): the app feeds the returned
    caches back on the next call (rule 8)."""

    def __init__(self, model: GPT2):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, key_cache: torch.Tensor,
                value_cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Unlike state, an io cache may be fp32: it keeps the package's precision.
        cache = StaticKVCache(key_cache, value_cache, position)
        hidden = self.model.hidden_states(input_ids, cache)
        logits = self.model.lm_head.forward_chunks(hidden)
        return (*logits, cache.new_keys, cache.new_values)


class BertForExport(nn.Module):
    """Encoder outputs as a flat tuple: hidden (1, C, 1, S), then pooled (1, C), sentence embedding
    (1, C) and MLM logit chunks (1, V_j, 1, S), each only where the checkpoint has it."""

    def __init__(self, model: BertEncoder):
        super().__init__()
        self.model = model

    def output_names(self) -> list[str]:
        cfg, names = self.model.cfg, [HIDDEN]
        if cfg.has_pooler:
            names.append(POOLED)
        if cfg.pooling is not None:
            names.append(SENTENCE_EMBEDDING)
        if self.model.mlm is not None:
            names += logits_names("mlm_logits", len(self.model.mlm.decoder.chunks))
        return names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        result = [out.hidden]
        if out.pooled is not None:
            result.append(out.pooled)
        if out.sentence_embedding is not None:
            result.append(out.sentence_embedding)
        if self.model.mlm is not None:
            # The model's own concatenated logits are left unused (dead code, removed by the
            # converter); the chunks are the outputs (rule 7).
            result += self.model.mlm.forward_chunks(out.hidden)
        return tuple(result)
