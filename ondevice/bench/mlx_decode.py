"""Our MLX model against mlx-lm's, on the same weights: greedy decode tokens/s and prefill time, for
`ondevice bench`'s mlx_lm peer and `benchmarks/mlx_decode_vs_mlx_lm.py`; any causal LM whose family mlx-lm
has (GPT-2, the Llama family: `convert/mlx_lm_<family>.py`).

Both sides load our MLX export of the checkpoint (`convert.mlx_export.export_mlx`, mlx-lm's own weight
names and config keys): the same file (mlx-lm cannot read a transformers-5 `save_pretrained` GPT-2).
mlx and mlx-lm are imported when a function runs, so that importing this module needs neither."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ondevice.bench.measure import decode_tokens_per_s, seconds

__all__ = ["decode_tokens_per_s", "export_for_mlx_lm", "mlx_lm_prefill_s", "mlx_lm_tokens_per_s"]


def export_for_mlx_lm(checkpoint, out: Path, dtype: str):
    """(our MLX model loaded from the export, mlx-lm's model loaded from it, the export's directory), or
    None when mlx-lm cannot run the checkpoint with our logits. `checkpoint`: a `convert` Checkpoint."""
    from mlx_lm.utils import load_model

    from convert.mlx_checkpoint import load_mlx_checkpoint
    from convert.mlx_export import export_mlx, mlx_lm_compatible
    from ondevice.backends.mlx import load

    if not mlx_lm_compatible(checkpoint.config):
        return None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    export = export_mlx(checkpoint, Path(out), dtype=dtype, overwrite=True, progress=False)
    return load(load_mlx_checkpoint(export), dtype=None), load_model(Path(export))[0], Path(export)


def mlx_lm_tokens_per_s(model, prompt: list[int], tokens: int) -> float:
    """Greedy decode of mlx-lm's model through its prompt cache after `prompt`: tokens/s of the
    `tokens` single-token steps (the prompt not counted), as `decode_tokens_per_s` does for ours."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)
    token = mx.argmax(logits[0, -1]).item()
    start = time.perf_counter()
    for _ in range(tokens):
        logits = model(mx.array([[token]]), cache=cache)
        token = mx.argmax(logits[0, -1]).item()
    return tokens / (time.perf_counter() - start)


def mlx_lm_prefill_s(model, ids: list[int]) -> float:
    """Seconds of one mlx-lm forward over `ids` into an empty cache, its (S, V) logits handed over as
    numpy, as our `prefill` returns them."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    def run() -> None:
        logits = model(mx.array([ids]), cache=make_prompt_cache(model))
        np.array(logits[0].astype(mx.float32), copy=False)

    return seconds(run)
