"""The KV cache of the torch runtime: fixed-capacity buffers that decoding fills and can rewind.

A model talks to a cache through four members, so a converter can pass a different implementation
(static shapes, Core ML state) to the same model code:
    offset              position of the first new token (int, or a 0-d tensor when exported)
    key_length(S)       how many key slots attention sees after writing S new tokens
    update(i, k, v)     write layer i's new keys/values (B, C_kv, 1, S); return all of them (B, C_kv, 1, Sk)
    advance(S)          called once per forward, after every layer has written
"""

from __future__ import annotations

import torch

from canonical.errors import InputError


class KVCache:
    def __init__(self, num_layers: int, kv_width: int, capacity: int, batch: int = 1,
                 dtype: torch.dtype = torch.float32):
        """kv_width: channels of one layer's keys (and values), the config's `kv_width` = num_kv_heads *
        head_dim; with grouped-query attention that is less than the hidden size, and only those are kept."""
        shape = (batch, kv_width, 1, capacity)  # rule 1: (B, C, 1, S), sequence last
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
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

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.key_length(k.shape[-1])
        self.keys[layer][..., self.length : end] = k
        self.values[layer][..., self.length : end] = v
        return self.keys[layer][..., :end], self.values[layer][..., :end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def trim(self, length: int) -> None:
        """Rewind to the first `length` tokens; later slots are overwritten by the next decode."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot trim a cache of {self.length} tokens to {length}")
        self.length = length
