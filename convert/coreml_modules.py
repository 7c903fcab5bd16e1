"""The torch modules that `torch.export` sees when we write a Core ML package: thin wrappers around any
family's ANE-layout model that fix the input/output names and shapes of the package.

A causal model is an `ane_model.causal_lm.CausalLM` (`cfg`, `hidden_states(input_ids, cache)`, `final_norm`, a
chunked `lm_head`); an encoder returns
outputs with `hidden`, `pooled`, `sentence_embedding` and `mlm_logits` (None where the checkpoint has no
such head) and offers the head's chunks as `mlm_logit_chunks(hidden)`. The names themselves are the
package's interface and live in `coreml_runtime/interface.py`."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ane_model.causal_lm import CausalLM
from ane_model.static_cache import StaticKVCache
from coreml_runtime.interface import (
    CACHE_NAMES,
    HIDDEN,
    KV_CACHE,
    MLM_LOGITS,
    POOLED,
    SENTENCE_EMBEDDING,
    logits_names,
)

# Core ML state must be fp16 (coremltools casts any other buffer dtype); the io cache matches it.
CACHE_DTYPE = torch.float16


def cache_shapes(model: CausalLM, context: int, longest_call: int) -> dict[str, tuple[int, ...]]:
    """The package's cache tensors by name (interface.CACHE_NAMES), as the model lays them out (rule 1: (L, C_kv, 1,
    T), sequence last; Gemma 3 adds its sliding layers' ring)."""
    return {CACHE_NAMES[role]: shape for role, shape in model.static_cache_shapes(context, longest_call).items()}


def _by_role(model: CausalLM, tensors: dict[str, torch.Tensor], position: torch.Tensor):
    roles = {name: role for role, name in CACHE_NAMES.items()}
    return model.static_cache({roles[name]: tensor for name, tensor in tensors.items()}, position)


class CausalLMWithState(nn.Module):
    """Causal LM whose KV cache is Core ML state (iOS 18+): every registered buffer of an exported
    program becomes a `ct.StateType`, read at the start and written back in place (rule 8). The buffers are the
    model's cache tensors (`cache_shapes`): keys and values, and Gemma 3's ring of window slots."""

    def __init__(self, model: CausalLM, context: int, longest_call: int):
        super().__init__()
        self.model = model
        self.names = list(cache_shapes(model, context, longest_call))
        for name, shape in cache_shapes(model, context, longest_call).items():
            self.register_buffer(name, torch.zeros(shape, dtype=CACHE_DTYPE))

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = _model_dtype(self.model)
        cache = _by_role(self.model, {name: getattr(self, name).to(dtype) for name in self.names}, position)
        hidden = self.model.hidden_states(input_ids, cache)  # (1, C, 1, S)
        for role, tensor in cache.new_tensors().items():
            getattr(self, CACHE_NAMES[role]).copy_(tensor.to(CACHE_DTYPE))
        return tuple(self.model.lm_head.forward_chunks(hidden))  # each (1, V_j, 1, S)


class CausalLMWithIOCache(nn.Module):
    """Causal LM whose KV cache is passed in and returned (iOS 16/17): the app feeds the returned
    caches back on the next call (rule 8). Inputs after (input_ids, position): the caches of `names`, in order;
    outputs after the logits: the same caches updated."""

    def __init__(self, model: CausalLM, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(
        self, input_ids: torch.Tensor, position: torch.Tensor, *caches: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # Unlike state, an io cache may be fp32: it keeps the package's precision.
        cache = _by_role(self.model, dict(zip(self.names, caches, strict=True)), position)
        hidden = self.model.hidden_states(input_ids, cache)
        logits = self.model.lm_head.forward_chunks(hidden)
        updated = {CACHE_NAMES[role]: tensor for role, tensor in cache.new_tensors().items()}
        return (*logits, *(updated[name] for name in self.names))


def _model_dtype(model: CausalLM) -> torch.dtype:
    """The dtype of the model's weights (a chunked model's part holds some blocks only)."""
    return next(model.parameters()).dtype


class EmbedForExport(nn.Module):
    """A chunked model's first step: token (and, for GPT-2, position) embeddings (1, C, 1, S) at `position`."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, position)


class HeadForExport(nn.Module):
    """A chunked model's last step: final norm and the vocabulary head's chunks, each (1, V_j, 1, S) (rule 7)."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.lm_head.forward_chunks(self.model.final_norm(hidden)))


class BlocksWithState(nn.Module):
    """A chunked model's part: the blocks `blocks` over hidden states (1, C, 1, S), with their KV cache (only theirs)
    as Core ML state (rule 8): one state KV_CACHE, (2 L, C_kv, 1, T), keys in rows [0, L), values in [L, 2 L).

    One state rather than two: coremltools 9.0's `canonicalize_inplace_pattern` pass fails (a KeyError inside it)
    when two state updates follow the ops that compute them with nothing in between, which is what a part ending in
    its caches gives (a single package computes its logits after them)."""

    kv_cache: torch.Tensor

    def __init__(self, model: CausalLM, blocks: range, context: int):
        super().__init__()
        self.model, self.blocks = model, blocks
        shape = (2 * len(blocks), model.cfg.kv_width, 1, context)  # rule 1: (2 L, C_kv, 1, T), sequence last
        self.register_buffer(KV_CACHE, torch.zeros(shape, dtype=CACHE_DTYPE))

    def forward(self, hidden: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        dtype, layers = _model_dtype(self.model), len(self.blocks)
        both = self.kv_cache.to(dtype)
        cache = StaticKVCache(both[:layers], both[layers:], position)
        hidden = self.model.run_blocks(hidden, cache, position, self.blocks)
        self.kv_cache.copy_(torch.cat([cache.new_keys, cache.new_values], dim=0).to(CACHE_DTYPE))
        return hidden


class Encoder(Protocol):
    """An encoder as `EncoderForExport` uses it (an `nn.Module`: calling it runs its forward)."""

    def __call__(self, *inputs: torch.Tensor | None) -> Any: ...

    def mlm_logit_chunks(self, hidden: torch.Tensor) -> list[torch.Tensor]: ...


class EncoderForExport(nn.Module):
    """Encoder outputs as a flat tuple: hidden (1, C, 1, S), then pooled (1, C), sentence embedding (1, C)
    and MLM logit chunks (1, V_j, 1, S), each only where the checkpoint has it."""

    def __init__(self, model: Encoder, example: tuple[torch.Tensor, ...]):
        super().__init__()
        self.model = model
        with torch.no_grad():
            out = model(*example)
        self.has = {
            "pooled": out.pooled is not None,
            "sentence_embedding": out.sentence_embedding is not None,
            "mlm": out.mlm_logits is not None,
        }
        self.mlm_chunks = len(model.mlm_logit_chunks(out.hidden)) if self.has["mlm"] else 0

    def output_names(self) -> list[str]:
        names = [HIDDEN]
        names += [POOLED] * self.has["pooled"] + [SENTENCE_EMBEDDING] * self.has["sentence_embedding"]
        return names + logits_names(MLM_LOGITS, self.mlm_chunks)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        result = [out.hidden]
        if out.pooled is not None:
            result.append(out.pooled)
        if out.sentence_embedding is not None:
            result.append(out.sentence_embedding)
        if out.mlm_logits is not None:
            # The model's own concatenated logits are left unused (dead code, removed by the
            # converter); the chunks are the outputs (rule 7).
            result += self.model.mlm_logit_chunks(out.hidden)
        return tuple(result)
