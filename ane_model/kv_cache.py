"""The KV cache of the torch runtime: per-layer buffers in the (B, C_kv, 1, T) layout that decoding fills and
`trim` rewinds (the contract: `canonical/cache.py`). Buffers grow in steps as tokens arrive, up to the
capacity, so a model of tens of thousands of positions holds only the slots its text has reached."""

from __future__ import annotations

import torch

from canonical.cache import GROWTH_STEP, CacheLength, grown_size

STEP = GROWTH_STEP  # tokens per growth of a buffer (tests shrink it to make buffers grow and copy)


class KVCache(CacheLength):
    def __init__(
        self, num_layers: int, kv_width: int, capacity: int, batch: int = 1, dtype: torch.dtype = torch.float32
    ):
        """kv_width: channels of one layer's keys (and values), the config's `kv_width` = num_kv_heads *
        head_dim; with grouped-query attention that is less than the hidden size, and only those are kept."""
        super().__init__(capacity)
        self.shape = (batch, kv_width, 1)  # rule 1: (B, C, 1, S), sequence last
        self.dtype = dtype
        self.keys = [torch.zeros((*self.shape, 0), dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros((*self.shape, 0), dtype=dtype) for _ in range(num_layers)]

    def reserve(self, end: int) -> None:
        """Make every layer's buffers hold at least `end` slots (the tokens before `length` kept)."""
        size = grown_size(end, self.capacity, STEP)
        for buffers in (self.keys, self.values):
            for i, buffer in enumerate(buffers):
                if buffer.shape[-1] < end:
                    grown = torch.zeros((*self.shape, size), dtype=self.dtype)
                    grown[..., : self.length] = buffer[..., : self.length]
                    buffers[i] = grown

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.key_length(k.shape[-1])
        if self.keys[layer].shape[-1] < end:
            self.reserve(end)
        self.keys[layer][..., self.length : end] = k
        self.values[layer][..., self.length : end] = v
        return self.keys[layer][..., :end], self.values[layer][..., :end]
