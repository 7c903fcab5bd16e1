"""What a KV cache must offer the models: four members, so that the runtime cache (`ane_model/kv_cache.py`,
`mlx_model/cache.py`), the export-time static cache (`ane_model/static_cache.py`) and a backend's own
variants all drive the same model code."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class KVCacheProtocol(Protocol):
    @property
    def offset(self) -> Any:
        """Position of the first new token: an int, or a 0-d / 1-element int tensor in an exported graph."""

    def key_length(self, new_tokens: int) -> int:
        """How many key slots attention sees once `new_tokens` are written; raises InputError past capacity."""

    def update(self, layer: int, keys: Any, values: Any) -> tuple[Any, Any]:
        """Write layer `layer`'s new keys and values and return all of them (the layout is the backend's:
        (B, C_kv, 1, S) in ane_model, (B, H_kv, S, D) in mlx_model)."""

    def advance(self, new_tokens: int) -> None:
        """Called once per forward, after every layer has written."""
