"""MLX models, one file per family, built from the canonical configs and weights that `convert/`
reads: the twins of `ane_model/` in MLX's own layout."""

from mlx_model.bert import BertEncoder, BertOutputs
from mlx_model.cache import KVCache
from mlx_model.gpt2 import GPT2

__all__ = ["GPT2", "BertEncoder", "BertOutputs", "KVCache", "build_model"]


def build_model(config, weights, dtype=None, bits=None, group_size=64, packed=False):
    """The MLX model for a canonical config (weights cast to `dtype`, fp32 by default; quantized
    to `bits` in groups of `group_size`, or already quantized when `packed`)."""
    import mlx.core as mx

    from canonical.gpt2 import GPT2Config

    model_cls = GPT2 if isinstance(config, GPT2Config) else BertEncoder
    return model_cls.from_canonical(config, weights, dtype or mx.float32, bits, group_size, packed)
