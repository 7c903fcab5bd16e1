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
        buffer = self.keys[layer]
        if buffer is None or buffer.shape[2] < end:
            self._grow(layer, k, v, end)
        self.keys[layer][:, :, self.length : end, :] = k
        self.values[layer][:, :, self.length : end, :] = v
        return self.keys[layer][:, :, :end, :], self.values[layer][:, :, :end, :]

    def _grow(self, layer: int, k: mx.array, v: mx.array, end: int) -> None:
        size = grown_size(end, self.capacity, STEP)
        for buffers, new in ((self.keys, k), (self.values, v)):
            batch, kv_heads, _, width = new.shape  # each from its own input: nothing assumes heads or widths
            grown = mx.zeros((batch, kv_heads, size, width), dtype=new.dtype)
            if buffers[layer] is not None:
                grown[:, :, : self.length, :] = buffers[layer][:, :, : self.length, :]
            buffers[layer] = grown
