"""The border with the outside world: Hugging Face checkpoints in, canonical configs and weights out
(and, later, Core ML packages and MLX weights written). Only this package knows Hugging Face names."""

from convert.checkpoint import Checkpoint, load_checkpoint
from convert.configs import BertConfig, GPT2Config, ModelConfig
from convert.errors import CheckpointError, ConversionError, InputError, OndeviceError

__all__ = [
    "BertConfig",
    "Checkpoint",
    "CheckpointError",
    "ConversionError",
    "GPT2Config",
    "InputError",
    "ModelConfig",
    "OndeviceError",
    "load_checkpoint",
]
