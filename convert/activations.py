"""Hugging Face activation names -> our canonical ones. Unknown names are an error, not a guess."""

from canonical.config import Activation
from canonical.errors import CheckpointError

_HF_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def canonical_activation(name: object, field: str) -> Activation:
    if name not in _HF_ACTIVATIONS:
        known = ", ".join(sorted(_HF_ACTIVATIONS))
        raise CheckpointError(f"config.json: {field}={name!r} is not supported (supported: {known})")
    return _HF_ACTIVATIONS[name]
