"""Backend: our ANE-layout torch models, run by torch on the CPU: the model code Core ML converts, with
each spelled-out ANE operation run as one fused CPU kernel (ane_model/cpu_fused.py). The family's model
(and its optional batched branch scorer) comes from the registry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ane_model.cpu_fused import fuse_for_cpu
from ane_model.kv_cache import KVCache
from canonical.config import ModelConfig
from canonical.errors import InputError
from convert.checkpoint import Checkpoint
from convert.registry import build_ane_model, family_of, optional_part
from ondevice.runtime import serial_branch_logits

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TorchCausalLM:
    backend = "torch-ane"

    def __init__(
        self, config: ModelConfig, weights: dict[str, torch.Tensor], dtype: str = "fp32", capacity: int | None = None
    ):
        self.config = config
        self.dtype = DTYPES[dtype]
        self.model = fuse_for_cpu(build_ane_model(config, weights).to(self.dtype))
        self.capacity = min(capacity or config.max_positions, config.max_positions)
        self.cache = KVCache(config.num_layers, config.kv_width, self.capacity, dtype=self.dtype)
        scorer = optional_part(family_of(config), "cpu_branch_scorer")
        # Without a batched scorer, `runtime.branch_logits` scores branches through prefill and trim.
        self.branches = None if scorer is None else scorer(self.model, self.cache)

    @property
    def length(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise InputError("prefill needs at least one token")
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        self._forget_branches()
        logits = self.model(ids, self.cache)  # (1, V, 1, S)
        return logits[0, :, 0, :].T.float().numpy()  # (S, V)

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([token_id])[0]

    def trim(self, length: int) -> None:
        if length != self.cache.length:
            self._forget_branches()
        self.cache.trim(length)

    def _forget_branches(self) -> None:
        if self.branches is not None:
            self.branches.forget()

    def branch_logits(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits (N, V) after each of N equally long continuations of the cached context, the cache left as
        it was: in one batch where the family has a branch scorer, else one continuation at a time."""
        if self.branches is not None:
            return self.branches.logits(sequences)
        return serial_branch_logits(self, sequences)

    def adopt_branch(self, tokens: Sequence[int]) -> bool:
        """Extend the cache by `tokens` from the keys and values of the branch that scored them, when it is
        still remembered; False otherwise (then prefill them)."""
        return self.branches is not None and self.branches.adopt(tokens)


class TorchEncoder:
    backend = "torch-ane"

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], dtype: str = "fp32"):
        self.config = config
        self.dtype = DTYPES[dtype]
        self.model = fuse_for_cpu(build_ane_model(config, weights).to(self.dtype))

    @torch.inference_mode()
    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        types = None if token_type_ids is None else torch.as_tensor(token_type_ids, dtype=torch.long)
        out = self.model(
            torch.as_tensor(input_ids, dtype=torch.long), torch.as_tensor(attention_mask, dtype=torch.long), types
        )
        result = {"hidden": out.hidden[:, :, 0, :].transpose(1, 2)}  # (B, C, 1, S) -> (B, S, C)
        if out.pooled is not None:
            result["pooled"] = out.pooled
        if out.sentence_embedding is not None:
            result["sentence_embedding"] = out.sentence_embedding
        if out.mlm_logits is not None:
            result["mlm_logits"] = out.mlm_logits[:, :, 0, :].transpose(1, 2)
        return {name: t.float().numpy() for name, t in result.items()}


def load(checkpoint: Checkpoint, dtype: str = "fp32", capacity: int | None = None):
    if checkpoint.config.is_causal:
        return TorchCausalLM(checkpoint.config, checkpoint.weights, dtype, capacity)
    return TorchEncoder(checkpoint.config, checkpoint.weights, dtype)
