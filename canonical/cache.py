"""The KV cache contract between the models and whoever drives them, written once.

A model talks to a cache through four members, so that the runtime caches (`ane_model/kv_cache.py`,
`mlx_model/cache.py`), the export-time static cache (`ane_model/static_cache.py`) and a backend's own variants
all drive the same model code:

    offset              position of the first new token (an int, or a 0-d / 1-element tensor in an exported graph)
    key_length(S)       how many key slots attention sees once S new tokens are written; InputError past capacity
    update(i, k, v)     write layer i's new keys and values and return all of them, in the backend's layout:
                        (B, C_kv, 1, S) in ane_model, (B, H_kv, S, D) in mlx_model
    advance(S)          called once per forward, after every layer has written (by the models' shared
                        `hidden_states`, never by a family's own code)

A runtime cache also rewinds (`trim`), for keystroke-level edits. `CacheLength` is that bookkeeping, shared by
both runtime caches; each adds the buffers of its backend and the `update` that fills them."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from canonical.errors import InputError


@runtime_checkable
class KVCacheProtocol(Protocol):
    @property
    def offset(self) -> Any:
        """Position of the first new token: an int, or a 0-d / 1-element int tensor in an exported graph."""

    def key_length(self, new_tokens: int) -> int:
        """How many key slots attention sees once `new_tokens` are written; raises InputError past capacity."""

    def update(self, layer: int, keys: Any, values: Any) -> tuple[Any, Any]:
        """Write layer `layer`'s new keys and values and return all of them."""

    def advance(self, new_tokens: int) -> None:
        """Called once per forward, after every layer has written."""


class CacheLength:
    """How many tokens a runtime cache holds, of how many it may: the offset, the capacity check, the advance and
    the rewind that every runtime cache shares."""

    def __init__(self, capacity: int):
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

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def trim(self, length: int) -> None:
        """Rewind to the first `length` tokens; later slots are overwritten by the next writes."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot trim a cache of {self.length} tokens to {length}")
        self.length = length


# Runtime caches grow their buffers in steps of this many tokens (as mlx-lm's does) rather than holding their whole
# capacity from the start: a cache of Qwen3-0.6B's 40,960 positions is 9.4 GB in fp32, mostly never reached.
GROWTH_STEP = 256


def grown_size(needed: int, capacity: int, step: int = GROWTH_STEP) -> int:
    """Slots to allocate for `needed` tokens: rounded up to a whole step, at most the capacity."""
    return min(capacity, -(-needed // step) * step)
