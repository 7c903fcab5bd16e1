"""MLX models, one file per family, built from the canonical configs and weights of `canonical/`: the
twins of `ane_model/` in MLX's own layout. Shared layers in `layers.py`, the KV cache in `cache.py`.

Importing the package imports no family: the registry (`convert/registry.py`) names the class to use."""
