"""Backend: our MLX models (`mlx_model/`), on the GPU of a Mac or MLX's CPU backend elsewhere.

Takes either a Hugging Face checkpoint (`convert.checkpoint.Checkpoint`: torch weights, cast and
optionally quantized here) or an exported MLX directory (`convert.mlx_checkpoint.MLXCheckpoint`:
weights already in their final dtype, possibly quantized)."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from canonical.config import ModelConfig
from canonical.errors import InputError
from convert.checkpoint import Checkpoint
from convert.mlx_checkpoint import MLXCheckpoint
from convert.registry import build_mlx_model
from mlx_model.cache import KVCache
from mlx_model.layers import DTYPES

GROUP_SIZES = (32, 64, 128)  # what MLX's affine quantization accepts


def _numpy(x: mx.array) -> np.ndarray:
    return np.array(x if x.dtype == mx.float32 else x.astype(mx.float32), copy=False)


class MLXCausalLM:
    backend = "mlx"

    def __init__(self, config: ModelConfig, model, capacity: int | None = None):
        self.config = config
        self.model = model
        self.capacity = min(capacity or config.max_positions, config.max_positions)
        self.cache = KVCache(config.num_layers, self.capacity)

    @property
    def length(self) -> int:
        return self.cache.length

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise InputError("prefill needs at least one token")
        logits = self.model(mx.array([list(token_ids)], dtype=mx.int32), self.cache)[0]  # (S, V)
        # Evaluating the logits evaluates this step's cache writes too (attention read them), so the
        # lazy graph never outlives a step.
        mx.eval(logits)
        return _numpy(logits)

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([token_id])[0]

    def trim(self, length: int) -> None:
        self.cache.trim(length)


class MLXEncoder:
    backend = "mlx"

    def __init__(self, config: ModelConfig, model):
        self.config = config
        self.model = model

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        types = None if token_type_ids is None else mx.array(np.asarray(token_type_ids), dtype=mx.int32)
        out = self.model(
            mx.array(np.asarray(input_ids), dtype=mx.int32), mx.array(np.asarray(attention_mask), dtype=mx.int32), types
        )
        result = {"hidden": out.hidden}  # (B, S, C): already the runtime's layout
        if out.pooled is not None:
            result["pooled"] = out.pooled
        if out.sentence_embedding is not None:
            result["sentence_embedding"] = out.sentence_embedding
        if out.mlm_logits is not None:
            result["mlm_logits"] = out.mlm_logits
        mx.eval(list(result.values()))
        return {name: _numpy(a) for name, a in result.items()}


def load(
    checkpoint: Checkpoint | MLXCheckpoint,
    dtype: str | None = "fp32",
    capacity: int | None = None,
    quantize: int | None = None,
    group_size: int = 64,
):
    """A `CausalLM` (causal families) or `Encoder` (the BERT family) on MLX.

    dtype: fp32, fp16 or bf16 for the weights and compute; None keeps an MLX directory's own.
    quantize: 4 or 8 to quantize a Hugging Face checkpoint's weights on load (an MLX directory
    carries its own quantization)."""
    if isinstance(checkpoint, MLXCheckpoint):
        dtype = dtype or checkpoint.dtype
        if quantize is not None:
            raise InputError(f"{checkpoint.directory}: already converted; quantize when converting instead")
        q = checkpoint.quantization
        bits, group_size, packed = (q["bits"], q["group_size"], True) if q else (None, group_size, False)
    else:
        dtype = dtype or "fp32"
        bits, packed = quantize, False
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} for the mlx backend (choose from {', '.join(DTYPES)})")
    if bits not in (None, 4, 8):
        raise InputError(f"quantization to {bits} bits is not supported (choose 4 or 8)")
    if bits and group_size not in GROUP_SIZES:
        raise InputError(f"quantization group size {group_size} is not supported (choose 32, 64 or 128)")
    model = build_mlx_model(checkpoint.config, checkpoint.weights, DTYPES[dtype], bits, group_size, packed)
    if checkpoint.config.is_causal:
        return MLXCausalLM(checkpoint.config, model, capacity)
    return MLXEncoder(checkpoint.config, model)
