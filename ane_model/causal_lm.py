"""What every ANE-layout causal LM is to the rest of the package, written once: the exporter (`convert/coreml.py`,
`convert/coreml_modules.py`), GPTQ calibration (`convert/coreml_calibrate.py`), the torch backend and the CPU
branch scorers call these members, and a family subclasses `CausalLM` with only what differs.

A family gives, in its `__init__` (module order there is the order of the package's weights):
    cfg          its canonical config (`tie_word_embeddings`, `num_layers`, `max_positions`, ...)
    tok_embed    the token table, or None when tied (the head's chunks are then the table, stored once)
    layers       blocks called as `block(x, mask, cache, i, *layer_inputs)` on (B, C, 1, S)
    final_norm   the norm before the head
    lm_head      a `ChunkedHead` (rule 7)
and overrides, where its positions need them:
    embed(ids, offset)           token (and position) embeddings as (B, C, 1, S)
    layer_inputs(seq, offset)    what every block takes besides (x, mask, cache, layer): RoPE tables, ...
    mask_inputs(seq, key_len, offset, dtype, cache)   masks besides the causal one, after the layer inputs
                                 (Gemma 3's sliding window)
    static_cache_shapes(context, S), static_cache(tensors, position)   a Core ML package's caches, where they are
                                 more than every layer's keys and values over the context (Gemma 3's ring)
    limit_positions(positions)   export for a context of `positions` tokens: position tables cut to it

The steps every forward shares (offset -> position check -> embed -> key length -> mask -> blocks -> cache advance
-> final norm) live in `hidden_states` and `run_blocks` alone, so no family remembers them; a chunked package's
parts call `embed`, `run_blocks` over their own layers, and `final_norm` + `lm_head` separately."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ane_model.layers import ChunkedHead, causal_mask, load_causal_lm, without_random_init
from ane_model.static_cache import StaticKVCache
from canonical.cache import KVCacheProtocol
from canonical.config import ModelConfig, check_positions


class CausalLM(nn.Module):
    cfg: ModelConfig
    tok_embed: nn.Embedding | None
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: ChunkedHead

    # The modules outside the blocks that hold weights: a chunked model's embed/head part (a family adds its own,
    # e.g. GPT-2's position table)
    EMBED_AND_HEAD: tuple[str, ...] = ("tok_embed", "final_norm", "lm_head")

    @classmethod
    def from_canonical(cls, cfg, weights: Mapping[str, torch.Tensor]) -> CausalLM:
        """Built from canonical weights, in eval mode. Tied (as transformers ties it): the head's chunks come from
        `tok_embed.weight`, whatever `lm_head.weight` holds, and serve as the token embedding."""
        return load_causal_lm(cls.unloaded(cfg), weights)

    @classmethod
    def unloaded(cls, cfg) -> CausalLM:
        """Built without its weights: parameters allocated and never written, so the memory of those not loaded later
        (`load_part`) is never touched. Position tables are computed, as they come from the config."""
        with without_random_init():
            return cls(cfg).eval()

    def load_part(self, weights: Mapping[str, torch.Tensor], modules: tuple[str, ...]) -> None:
        """Load the weights of `modules` ("layers.3", "lm_head", ...) only, one tensor at a time."""
        load_causal_lm(self, weights, within=modules)

    def release_part(self, modules: tuple[str, ...]) -> None:
        """Give back the memory of `modules`' weights (they are not used again)."""
        for name in modules:
            module = self.get_submodule(name) if name != "lm_head" else self.lm_head
            for parameter in module.parameters():
                parameter.data = torch.empty(0, dtype=parameter.dtype)

    def part_view(self, blocks: range | None) -> CausalLM:
        """What torch.export sees of a chunked model's part, so that only the part's weights enter its program: the
        blocks `blocks` without the embed/head modules, or (None) the embed/head modules without any block. A shallow
        copy: the modules themselves are shared with this model."""
        view = copy.copy(self)
        view._modules = dict(self._modules)  # its own children (the same modules)
        view.layers = nn.ModuleList(self.layers[i] for i in blocks) if blocks is not None else nn.ModuleList()
        if blocks is not None:
            for name in self.EMBED_AND_HEAD:
                if name in view._modules:
                    view._modules[name] = None
        return view

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, S, C): rows of the head's chunks when tied, of `tok_embed` otherwise."""
        return self.lm_head.embed(input_ids) if self.tok_embed is None else self.tok_embed(input_ids)

    def embed(self, input_ids: torch.Tensor, offset) -> torch.Tensor:
        """input_ids (B, S) at positions offset .. -> (B, C, 1, S). Positions enter through the blocks (RoPE)
        unless a family adds them here."""
        return self.embed_tokens(input_ids).transpose(1, 2).unsqueeze(2)  # rule 1: (B, C, 1, S), once, at the input

    def layer_inputs(self, seq: int, offset, dtype: torch.dtype) -> tuple:
        """What a block takes besides (x, mask, cache, layer), once per forward: nothing by default."""
        return ()

    def mask_inputs(self, seq: int, key_len, offset, dtype: torch.dtype, cache: KVCacheProtocol | None = None) -> tuple:
        """Additive masks (1, Sk, 1, Sq) a block takes after `layer_inputs`, once per forward, for attention other than
        causal over every key (a sliding window): none by default."""
        return ()

    def static_cache_shapes(self, context: int, longest_call: int) -> dict[str, tuple[int, ...]]:
        """A Core ML package's cache tensors, by role: keys and values of every layer over the whole context (rule 1:
        (L, C_kv, 1, T), sequence last) by default; a family with sliding-window layers adds their ring (Gemma 3)."""
        shape = (self.cfg.num_layers, self.cfg.kv_width, 1, context)
        return {"keys": shape, "values": shape}

    def static_cache(self, tensors: dict[str, torch.Tensor], position: torch.Tensor) -> StaticKVCache:
        """The export-time cache over `tensors` (by role, shaped as `static_cache_shapes` says); its `new_tensors()`
        after a forward are what the package writes back (state) or returns (io)."""
        return StaticKVCache(tensors["keys"], tensors["values"], position)

    def limit_positions(self, positions: int) -> None:
        """Export for a context of `positions` tokens: nothing to cut by default."""

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> final-norm hidden states (B, C, 1, S); appends to `cache` if given. `cache.offset` may
        be a runtime tensor (an exported graph): the position check then belongs to the export's fixed context."""
        seq = input_ids.shape[1]
        offset = 0 if cache is None else cache.offset
        check_positions(self.cfg, offset + seq)
        x = self.run_blocks(self.embed(input_ids, offset), cache, offset, range(len(self.layers)))
        if cache is not None:
            cache.advance(seq)
        return self.final_norm(x)

    def run_blocks(self, x: torch.Tensor, cache: KVCacheProtocol | None, offset, blocks: range) -> torch.Tensor:
        """Hidden states (B, C, 1, S) at positions offset .. through the blocks `blocks`, in order. The cache holds
        those blocks' keys only, indexed from 0 (a chunked package's part holds its own layers' cache)."""
        seq = x.shape[-1]
        key_len = seq if cache is None else cache.key_length(seq)
        mask = causal_mask(seq, key_len, offset, x.dtype)
        extras = self.layer_inputs(seq, offset, x.dtype) + self.mask_inputs(seq, key_len, offset, x.dtype, cache)
        for slot, i in enumerate(blocks):
            x = self.layers[i](x, mask, cache, slot, *extras)
        return x

    def forward(self, input_ids: torch.Tensor, cache: KVCacheProtocol | None = None) -> torch.Tensor:
        """input_ids (B, S) -> logits (B, V, 1, S)."""
        return self.lm_head(self.hidden_states(input_ids, cache))
