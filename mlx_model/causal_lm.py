"""What every MLX causal LM is to the rest of the package, written once: the twin of `ane_model/causal_lm.py`.

A family subclasses `CausalLM` and gives, in its `__init__`: `cfg`, `tok_embed` (always: a tied head is
`tok_embed.as_linear`, stored once), `layers` (blocks called as `block(x, mask, cache, i)` on (B, S, C)),
`final_norm`, and `lm_head` unless the config ties it; and overrides `embed(ids, offset)` where positions enter
with the tokens (GPT-2; Gemma 3 scales them) and `layer_inputs(seq, offset)` where its blocks take more than
`(x, mask, cache, i)` (Gemma 3's sliding-window mask). The shared steps (key length checked before any layer
writes -> position check -> embed -> mask -> blocks -> cache advance -> final norm) live in `hidden_states` alone."""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import mlx.nn as nn

from canonical.cache import KVCacheProtocol
from canonical.config import check_positions
from mlx_model.layers import build, causal_mask, without_tied_head


class CausalLM(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def from_canonical(
        cls,
        cfg,
        weights: Mapping[str, object],
        dtype: mx.Dtype = mx.float32,
        bits: int | None = None,
        group_size: int = 64,
        packed: bool = False,
    ) -> CausalLM:
        """Build from canonical weights; `bits`/`group_size`/`packed` as in `layers.build`."""
        return build(cls(cfg), without_tied_head(cfg, weights), dtype, bits, group_size, packed)

    def embed(self, input_ids: mx.array, offset: int) -> mx.array:
        """input_ids (B, S) at positions offset .. -> (B, S, C): positions enter through attention (RoPE) unless a
        family adds them here."""
        return self.tok_embed(input_ids)

    def layer_inputs(self, seq: int, offset: int) -> tuple:
        """What every block takes after (x, mask, cache, i), once per forward: nothing by default."""
        return ()

    def hidden_states(self, input_ids: mx.array, cache: KVCacheProtocol | None = None) -> mx.array:
        """input_ids (B, S) -> final-norm hidden states (B, S, C); appends to `cache` if given."""
        seq = input_ids.shape[1]
        offset = 0 if cache is None else cache.offset
        if cache is not None:
            cache.key_length(seq)  # refuse an overflow before any layer writes
        check_positions(self.cfg, offset + seq)
        x = self.embed(input_ids, offset)
        mask = causal_mask(seq, offset)  # (S, Sk) or None for one token
        extras = self.layer_inputs(seq, offset)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i, *extras)
        if cache is not None:
            cache.advance(seq)
        return self.final_norm(x)

    def __call__(self, input_ids: mx.array, cache: KVCacheProtocol | None = None) -> mx.array:
        """input_ids (B, S) -> logits (B, S, V)."""
        x = self.hidden_states(input_ids, cache)
        return self.tok_embed.as_linear(x) if self.cfg.tie_word_embeddings else self.lm_head(x)
