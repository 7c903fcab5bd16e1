"""A static-shape KV cache for export: the same four-member protocol as `KVCache` (see kv_cache.py),
written so that every shape is fixed and the write position is a runtime tensor.

Core ML cannot slice at a data-dependent offset without dynamic shapes, so a write is a blend:
a one-hot placement `P (1, S, 1, T)` scatters the S new keys into the T slots with the attention's
own `weights @ values` einsum, and `cache * (1 - written) + scattered` keeps the other slots. Attention
then always sees all T slots; `causal_mask` with the runtime offset hides the slots not yet written.

The full caches `(L, C, 1, T)` come in as tensors (a read of Core ML state, or model inputs) and the
updated ones are available after the forward as `new_keys` / `new_values` (written back to state, or
returned as outputs)."""

from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor):
        """keys, values: (L, C, 1, T); position: (1,) int, the slot of the first new token."""
        self.keys, self.values = keys, values
        self.position = position
        self.capacity = keys.shape[-1]
        self._new_keys: list[torch.Tensor] = []
        self._new_values: list[torch.Tensor] = []
        self._placement: torch.Tensor | None = None

    @property
    def offset(self) -> torch.Tensor:
        return self.position

    def key_length(self, new_tokens: int) -> int:
        return self.capacity  # rule 7: static shapes; unwritten slots are masked, not sliced away

    def _place(self, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
        if self._placement is None:
            slots = torch.arange(self.capacity).unsqueeze(0).unsqueeze(0).unsqueeze(0)  # (1, 1, 1, T)
            targets = (torch.arange(new_tokens) + self.position).unsqueeze(1).unsqueeze(2)  # (S, 1, 1)
            self._placement = (slots == targets.unsqueeze(0)).to(dtype)  # (1, S, 1, T) one-hot rows
        return self._placement

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        place = self._place(k.shape[-1], k.dtype)  # (1, S, 1, T)
        written = place.sum(dim=1, keepdim=True)  # (1, 1, 1, T): 1 where a new token lands
        keep = 1.0 - written
        out = []
        for new, full, store in ((k, self.keys, self._new_keys), (v, self.values, self._new_values)):
            old = full[layer : layer + 1]  # (1, C, 1, T)
            # rule 3's second einsum: scatter S tokens into T slots as a (S x T) one-hot product
            scattered = torch.einsum("bkhq,bchk->bchq", place, new)  # (1, C, 1, T)
            store.append(old * keep + scattered)
            out.append(store[-1])
        return out[0], out[1]

    def advance(self, new_tokens: int) -> None:
        """Nothing to count: the caller passes the next position explicitly."""

    @property
    def new_keys(self) -> torch.Tensor:
        return torch.cat(self._new_keys, dim=0)  # (L, C, 1, T)

    @property
    def new_values(self) -> torch.Tensor:
        return torch.cat(self._new_values, dim=0)
