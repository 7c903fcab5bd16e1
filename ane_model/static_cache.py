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

from ane_model.layers import MASK_VALUE


class StaticKVCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor, ring: bool = False):
        """keys, values: (L, C, 1, T); position: (1,) int, the position of the first new token, which is its slot (or,
        `ring`, the slot is the position modulo T: `WindowStaticKVCache`)."""
        self.keys, self.values = keys, values
        self.position = position
        self.ring = ring
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
            targets = torch.arange(new_tokens) + self.position
            if self.ring:
                targets = torch.remainder(targets, self.capacity)
            targets = targets.unsqueeze(1).unsqueeze(2)  # (S, 1, 1)
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

    def new_tensors(self) -> dict[str, torch.Tensor]:
        """The caches after a forward, by role (`CausalLM.static_cache_shapes`)."""
        return {"keys": self.new_keys, "values": self.new_values}


class WindowStaticKVCache:
    """Export-time cache of a model whose sliding-window layers keep only a window-sized ring of slots (Gemma 3), the
    global layers every position: the four-member protocol, dispatching each layer to one of two caches.

    The ring has R = window + S_max slots (S_max: the longest call, the prefill length); position p lives in slot
    p mod R. A call writes its S tokens first (the one-hot blend of `StaticKVCache`, over R slots), then attends, so
    after the write the slots hold positions last - R + 1 .. last (last = offset + S - 1), which covers every key a
    query of the call needs (q - window + 1 >= offset - window + 1 > last - R + 1). The slot of position p being
    p mod R, the position each slot holds is computed, not stored: slot j holds last - ((last - j) mod R), and
    `window_mask` allows query q the slots whose position lies in q - window + 1 .. q.

    What the ring cannot do: rewind far. A write at p replaces p - R, and a call writes all S_max slots, padding
    included, so once the highest slot written is H - 1 the positions below H - R hold later tokens where the mask
    expects earlier ones: a rewind to L keeps the ring while L >= H - S_max (the runtime re-reads the prefix past
    that: ondevice/backends/coreml.py). Without rewinds, padding a short prefill is safe: padded positions are >
    every real query's, and later calls overwrite them before any query can reach them."""

    def __init__(
        self,
        full: StaticKVCache,
        ring: StaticKVCache,
        sliding: tuple[bool, ...],
        window: int,
    ):
        """full: the global layers' cache (Lg, C, 1, T); ring: the sliding layers' (Ls, C, 1, R), made with `ring=True`;
        sliding: per layer of the model, whether it slides (its index among its kind picks its rows)."""
        self.full, self.ring, self.window = full, ring, window
        self._rows = [sum(1 for s in sliding[:i] if s == sliding[i]) for i in range(len(sliding))]
        self._sliding = sliding

    @property
    def offset(self) -> torch.Tensor:
        return self.full.position

    def key_length(self, new_tokens: int) -> int:
        return self.full.capacity  # the global layers' keys; the sliding layers' are `ring.capacity`

    def window_mask(self, query_len: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (1, R, 1, Sq) of the sliding layers over the ring (see the class docstring)."""
        slots = torch.arange(self.ring.capacity).unsqueeze(1).unsqueeze(2)  # (R, 1, 1)
        last = self.ring.position + (query_len - 1)
        held = last - torch.remainder(last - slots, self.ring.capacity)  # (R, 1, 1): the position slot j holds
        queries = (torch.arange(query_len) + self.ring.position).unsqueeze(0).unsqueeze(0)  # (1, 1, Sq)
        blocked = (held > queries).to(dtype)
        blocked = torch.maximum(blocked, (held <= queries - self.window).to(dtype))
        blocked = torch.maximum(blocked, (held < 0).to(dtype))  # nothing written there yet
        return blocked.unsqueeze(0) * MASK_VALUE

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row = self._rows[layer]
        if not self._sliding[layer]:
            return self.full.update(row, k, v)
        return self.ring.update(row, k, v)

    def advance(self, new_tokens: int) -> None:
        """Nothing to count: the caller passes the next position explicitly."""

    def new_tensors(self) -> dict[str, torch.Tensor]:
        """The caches after a forward, by role: the global layers' and the ring's."""
        ring = self.ring.new_tensors()
        return self.full.new_tensors() | {"window_keys": ring["keys"], "window_values": ring["values"]}
