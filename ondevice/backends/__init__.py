"""Backends by name. Each module exposes `load(checkpoint, dtype, capacity)` returning a `CausalLM`
(GPT-2) or an `Encoder` (BERT family); imported lazily so a missing optional library only affects
its own backend."""

from __future__ import annotations

import importlib

from canonical.errors import OndeviceError
from convert.checkpoint import Checkpoint

BACKENDS = {
    "torch-ane": "ondevice.backends.torch_ane",
    "mlx": "ondevice.backends.mlx",
    "coreml": "ondevice.backends.coreml",  # runs converted packages; given a checkpoint, says how to get one
}


def load_backend(name: str, checkpoint: Checkpoint, dtype: str = "fp32", capacity: int | None = None):
    if name not in BACKENDS:
        raise OndeviceError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})")
    module = importlib.import_module(BACKENDS[name])
    return module.load(checkpoint, dtype=dtype, capacity=capacity)
