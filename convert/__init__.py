"""The border with the outside world. Only this package knows Hugging Face key names and config fields:
it reads checkpoints into canonical configs and weights (`checkpoint.py`, `hf_*.py`), keeps the family
registry (`registry.py`), and writes Core ML packages and MLX directories (`coreml*.py`, `mlx_export.py`).

Importing the package imports nothing else: each command pays only for the modules it uses."""
