"""Backend: our ANE-layout torch models, run by torch on the CPU: the model code Core ML converts, with
each spelled-out ANE operation run as one fused CPU kernel (ane_model/cpu_fused.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ane_model import GPT2, BertEncoder, KVCache
from ane_model.cpu_fused import fuse_for_cpu
from canonical.bert import BertConfig
from canonical.errors import InputError
from canonical.gpt2 import GPT2Config
from convert.checkpoint import Checkpoint
from ondevice.backends.torch_branches import SharedPrefixBranches

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TorchCausalLM:
    backend = "torch-ane"

    def __init__(self, config: GPT2Config, weights: dict[str, torch.Tensor], dtype: str = "fp32",
                 capacity: int | None = None):
        self.config = config
        self.dtype = DTYPES[dtype]
        self.model = fuse_for_cpu(GPT2.from_canonical(config, weights).to(self.dtype))
        self.capacity = min(capacity or config.max_positions, config.max_positions)
        self.cache = KVCache(config.num_layers, config.hidden_size, self.capacity, dtype=self.dtype)
        self.branches = SharedPrefixBranches(self.model, self.cache)

    @property
    def length(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise InputError("prefill needs at least one token")
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        self.branches.forget()
        logits = self.model(ids, self.cache)  # (1, V, 1, S)
        return logits[0, :, 0, :].T.float().numpy()  # (S, V)

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([token_id])[0]

    def trim(self, length: int) -> None:
        if length != self.cache.length:
            self.branches.forget()
        self.cache.trim(length)

    def branch_logits(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits (N, V) after each of N equally long continuations of the cached context, in one batch;
        the cache itself is left as it was (torch_branches.py)."""
        return self.branches.logits(sequences)

    def adopt_branch(self, tokens: Sequence[int]) -> bool:
        """Extend the cache by `tokens` from the keys and values of the branch that scored them, when it is
        still remembered; False otherwise (then prefill them)."""
        return self.branches.adopt(tokens)


class TorchEncoder:
    backend = "torch-ane"

    def __init__(self, config: BertConfig, weights: dict[str, torch.Tensor], dtype: str = "fp32"):
        self.config = config
        self.dtype = DTYPES[dtype]
        self.model = fuse_for_cpu(BertEncoder.from_canonical(config, weights).to(self.dtype))

    @torch.inference_mode()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray,
               token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        types = None if token_type_ids is None else torch.as_tensor(token_type_ids, dtype=torch.long)
        out = self.model(torch.as_tensor(input_ids, dtype=torch.long),
                         torch.as_tensor(attention_mask, dtype=torch.long), types)
        result = {"hidden": out.hidden[:, :, 0, :].transpose(1, 2)}  # (B, C, 1, S) -> (B, S, C)
        if out.pooled is not None:
            result["pooled"] = out.pooled
        if out.sentence_embedding is not None:
            result["sentence_embedding"] = out.sentence_embedding
        if out.mlm_logits is not None:
            result["mlm_logits"] = out.mlm_logits[:, :, 0, :].transpose(1, 2)
        return {name: t.float().numpy() for name, t in result.items()}


def load(checkpoint: Checkpoint, dtype: str = "fp32", capacity: int | None = None):
    if isinstance(checkpoint.config, GPT2Config):
        return TorchCausalLM(checkpoint.config, checkpoint.weights, dtype, capacity)
    return TorchEncoder(checkpoint.config, checkpoint.weights, dtype)
