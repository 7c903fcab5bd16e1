"""The KV cache of the MLX runtime: per-layer buffers that decoding fills and `trim` rewinds.

Same four members as `ane_model/kv_cache.py`, so the model code reads the same:
    offset              position of the first new token
    key_length(S)       how many key slots attention sees after writing S new tokens
    update(i, k, v)     write layer i's new keys/values (B, G, S, D); return all of them (B, G, Sk, D)
                        (G: key/value heads, fewer than the query heads under grouped-query attention)
    advance(S)          called once per forward, after every layer has written

Buffers grow in steps (as mlx-lm's cache does) rather than being allocated at full capacity: a
1,024-token GPT-2 cache is 75 MB in fp32, mostly never used by a short prompt."""

from __future__ import annotations

import mlx.core as mx

from canonical.errors import InputError

STEP = 256


class KVCache:
    def __init__(self, num_layers: int, capacity: int):
        self.keys: list[mx.array | None] = [None] * num_layers
        self.values: list[mx.array | None] = [None] * num_layers
        self.capacity = capacity
        self.length = 0

    @property
    def offset(self) -> int:
        return self.length

    def key_length(self, new_tokens: int) -> int:
        end = self.length + new_tokens
        if end > self.capacity:
            raise InputError(f"{end} tokens exceed the KV cache capacity of {self.capacity}")
        return end

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        end = self.key_length(k.shape[2])
        buffer = self.keys[layer]
        if buffer is None or buffer.shape[2] < end:
            self._grow(layer, k, v, end)
        self.keys[layer][:, :, self.length : end, :] = k
        self.values[layer][:, :, self.length : end, :] = v
        return self.keys[layer][:, :, :end, :], self.values[layer][:, :, :end, :]

    def _grow(self, layer: int, k: mx.array, v: mx.array, end: int) -> None:
        size = min(self.capacity, -(-end // STEP) * STEP)  # round up to a whole step
        for buffers, new in ((self.keys, k), (self.values, v)):
            batch, kv_heads, _, width = new.shape  # each from its own input: nothing assumes heads or widths
            grown = mx.zeros((batch, kv_heads, size, width), dtype=new.dtype)
            if buffers[layer] is not None:
                grown[:, :, : self.length, :] = buffers[layer][:, :, : self.length, :]
            buffers[layer] = grown

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def trim(self, length: int) -> None:
        """Rewind to the first `length` tokens; later slots are overwritten by the next decode."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot trim a cache of {self.length} tokens to {length}")
        self.length = length
