"""The KV cache of the MLX runtime: per-layer buffers in the (B, H_kv, T, D) layout that decoding fills and `trim`
rewinds (the contract: `canonical/cache.py`; H_kv: key/value heads, fewer than the query heads under grouped-query
attention). Buffers grow in steps as tokens arrive, up to the capacity."""

from __future__ import annotations

import mlx.core as mx

from canonical.cache import GROWTH_STEP, CacheLength, grown_size

STEP = GROWTH_STEP  # tokens per growth of a buffer (tests shrink it to make buffers grow and copy)


class KVCache(CacheLength):
    def __init__(self, num_layers: int, capacity: int):
        super().__init__(capacity)
        self.keys: list[mx.array | None] = [None] * num_layers
        self.values: list[mx.array | None] = [None] * num_layers

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        end = self.key_length(k.shape[2])
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None or keys.shape[2] < end:
            keys, values = self._grow(layer, k, v, end)
        keys[:, :, self.length : end, :] = k
        values[:, :, self.length : end, :] = v
        return keys[:, :, :end, :], values[:, :, :end, :]

    def _grow(self, layer: int, k: mx.array, v: mx.array, end: int) -> tuple[mx.array, mx.array]:
        size = grown_size(end, self.capacity, STEP)
        keys = self.keys[layer] = self._grown(self.keys[layer], k, size)
        values = self.values[layer] = self._grown(self.values[layer], v, size)
        return keys, values

    def _grown(self, buffer: mx.array | None, new: mx.array, size: int) -> mx.array:
        """A buffer of `size` slots holding the first `self.length` tokens of `buffer` (if any)."""
        batch, kv_heads, _, width = new.shape  # each from its own input: nothing assumes heads or widths
        grown = mx.zeros((batch, kv_heads, size, width), dtype=new.dtype)
        if buffer is not None:
            grown[:, :, : self.length, :] = buffer[:, :, : self.length, :]
        return grown
