"""Torch models in the Neural Engine's preferred layout, one file per family, built from the
canonical configs and weights that `convert/` reads."""

from ane_model.bert import BertEncoder, BertOutputs
from ane_model.gpt2 import GPT2
from ane_model.kv_cache import KVCache

__all__ = ["GPT2", "BertEncoder", "BertOutputs", "KVCache", "build_model"]


def build_model(config, weights):
    """The ANE-layout model for a canonical config."""
    from canonical.gpt2 import GPT2Config

    model_cls = GPT2 if isinstance(config, GPT2Config) else BertEncoder
    return model_cls.from_canonical(config, weights)
