"""Backends by name. Each module exposes `load(checkpoint, dtype, capacity)` returning a `CausalLM` (causal
families) or an `Encoder`; imported lazily so a missing optional library only affects its own backend. The
coreml backend runs converted packages (`ondevice.backends.coreml.load_package`), not checkpoints."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from canonical.errors import OndeviceError

if TYPE_CHECKING:  # the coreml backend is imported through this package and must not need torch
    from convert.checkpoint import Checkpoint
    from convert.mlx_checkpoint import MLXCheckpoint

BACKENDS = {
    "torch-ane": "ondevice.backends.torch_ane",
    "mlx": "ondevice.backends.mlx",
}


def load_backend(
    name: str, checkpoint: Checkpoint | MLXCheckpoint, dtype: str | None = "fp32", capacity: int | None = None
):
    if name == "coreml":
        raise OndeviceError(
            "the coreml backend runs a converted package: convert with 'ondevice convert CHECKPOINT "
            "--to coreml --out PATH.mlpackage', then pass PATH.mlpackage"
        )
    if name not in BACKENDS:
        raise OndeviceError(f"unknown backend {name!r} (available: {', '.join([*BACKENDS, 'coreml'])})")
    if name != "mlx":
        from convert.checkpoint import Checkpoint

        if not isinstance(checkpoint, Checkpoint):  # an exported MLX directory (MLXCheckpoint)
            raise OndeviceError(f"{checkpoint.directory}: an MLX directory runs on the mlx backend, not {name}")
    module = importlib.import_module(BACKENDS[name])
    return module.load(checkpoint, dtype=dtype, capacity=capacity)
