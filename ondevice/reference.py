"""The ground truth: Hugging Face `transformers` on the CPU in fp32, loaded from the same directory.

Implements the same two interfaces as our backends, so every comparison is backend against this."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from canonical.bert import BertConfig
from canonical.config import ModelConfig
from canonical.errors import CheckpointError, InputError
from convert.checkpoint import Checkpoint

if TYPE_CHECKING:
    from transformers import Cache

    from convert.mlx_checkpoint import MLXCheckpoint


def _quiet_from_pretrained(model_cls, directory):
    # transformers prints load reports and progress bars to stderr; keep CLI output to our table.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model = model_cls.from_pretrained(directory, dtype=_stored_dtype(directory)).eval()
            return model.float()  # one tensor at a time; exact from bf16 and fp16
    except (ValueError, KeyError, OSError) as exc:  # e.g. a model_type transformers does not know
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: transformers cannot load the reference model ({reason})") from None


def _stored_dtype(directory) -> torch.dtype:
    """The dtype the reference is loaded in before its upcast to fp32: the checkpoint's own where every floating
    tensor of its safetensors files is stored in one 16-bit dtype (the upcast is exact, and the whole model is never
    held in both dtypes at once: loaded straight into fp32, a 3B bf16 checkpoint peaked at 18.4 GiB,
    docs/measurements.md), fp32 otherwise (fp32 weights, mixed dtypes, torch.load files)."""
    from pathlib import Path

    from convert.weights import TensorFiles

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return torch.float32
    headers = TensorFiles()
    for path in files:
        headers.add_safetensors(path)  # headers only: no tensor is read
    stored = {dtype for dtype in headers.dtypes.values() if dtype.is_floating_point}
    return stored.pop() if stored in ({torch.bfloat16}, {torch.float16}) else torch.float32


class ReferenceCausalLM:
    backend = "transformers-cpu"

    def __init__(self, checkpoint: Checkpoint):
        from transformers import AutoModelForCausalLM

        self.config: ModelConfig = checkpoint.config
        self.capacity = self.config.max_positions
        self.model = _quiet_from_pretrained(AutoModelForCausalLM, checkpoint.directory)
        self.tokens: list[int] = []
        self.past: Cache | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        out = self.model(ids, cache=self.past, use_cache=True)
        self.past = out.cache
        self.tokens += list(token_ids)
        return out.logits[0].float().numpy()

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([token_id])[0]

    def trim(self, length: int) -> None:
        if length == 0:
            self.past = None
        elif self.past is None:
            raise InputError(f"cannot trim a cache of 0 tokens to {length}")
        else:
            self.past.crop(length)
        self.tokens = self.tokens[:length]


class ReferenceEncoder:
    backend = "transformers-cpu"

    def __init__(self, checkpoint: Checkpoint):
        from transformers import AutoModel, AutoModelForMaskedLM

        # An encoder's config: BERT's fields (has_pooler, has_mlm_head, pooling, normalize).
        self.config = cast(BertConfig, checkpoint.config)
        cls = AutoModelForMaskedLM if self.config.has_mlm_head else AutoModel
        self.model = _quiet_from_pretrained(cls, checkpoint.directory)

    @torch.inference_mode()
    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        kwargs = {"attention_mask": torch.as_tensor(attention_mask, dtype=torch.long)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.as_tensor(token_type_ids, dtype=torch.long)
        out = self.model(torch.as_tensor(input_ids, dtype=torch.long), output_hidden_states=True, **kwargs)
        hidden = out.hidden_states[-1]
        result = {"hidden": hidden}
        if getattr(out, "pooler_output", None) is not None and self.config.has_pooler:
            result["pooled"] = out.pooler_output
        if self.config.has_mlm_head:
            result["mlm_logits"] = out.logits
        if self.config.pooling is not None:
            result["sentence_embedding"] = sentence_pooling(hidden, kwargs["attention_mask"], self.config)
        return {name: t.float().numpy() for name, t in result.items()}


def sentence_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor, cfg: BertConfig) -> torch.Tensor:
    """sentence-transformers' Pooling and Normalize modules, written out on (B, S, C)."""
    keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if cfg.pooling == "cls":
        pooled = hidden[:, 0]
    elif cfg.pooling == "mean":
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1e-9)
    else:
        pooled = hidden.masked_fill(keep == 0, -1e9).amax(1)
    return torch.nn.functional.normalize(pooled, dim=-1) if cfg.normalize else pooled


def load_reference(checkpoint: Checkpoint | MLXCheckpoint):
    if not isinstance(checkpoint, Checkpoint):  # an exported MLX directory: its weights are not the source's names
        raise CheckpointError(
            f"{checkpoint.directory}: an MLX directory is not a reference; pass the Hugging Face "
            "checkpoint it was exported from"
        )
    return (ReferenceCausalLM if checkpoint.config.is_causal else ReferenceEncoder)(checkpoint)
