"""Torch models in the Neural Engine's preferred layout, one file per family, built from the canonical
configs and weights of `canonical/`: shared layers in `layers.py`, KV caches in `kv_cache.py` (runtime)
and `static_cache.py` (export), and the CPU fast paths beside the models they accelerate (`cpu_fused.py`,
`gpt2_branches.py`). docs/ane-rules.md states the layout rules the comments cite.

Importing the package imports no family: the registry (`convert/registry.py`) names the class to use."""
