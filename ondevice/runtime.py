"""The one small interface every backend implements, so that verification, generation, predictive
text and benchmarks are written once.

Causal LMs keep a KV cache between calls: `prefill` appends tokens, `decode` appends one, `trim`
rewinds to a prefix (a keystroke-level edit only recomputes what changed). Encoders map a batch of
token ids to numpy arrays. Everything crossing this border is numpy, batch-major: logits (S, V),
hidden states (B, S, C)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from canonical.config import ModelConfig


class CausalLM(Protocol):
    config: ModelConfig  # config.is_causal
    backend: str  # e.g. "torch-ane", "mlx"
    capacity: int  # most tokens the cache holds

    @property
    def length(self) -> int:
        """Tokens currently in the cache."""

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens; return float32 logits (S, V) of every appended position."""

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; return its float32 logits (V,)."""

    def trim(self, length: int) -> None:
        """Keep the first `length` cached tokens and forget the rest."""


class Encoder(Protocol):
    config: ModelConfig  # not config.is_causal
    backend: str

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """(B, S) int arrays -> {"hidden": (B, S, C), "pooled": (B, C), "sentence_embedding": (B, C),
        "mlm_logits": (B, S, V)}, the last three only where the checkpoint has them; float32."""


def branch_logits(lm: CausalLM, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Logits (N, V) after appending each of N equally long token sequences to the cached context,
    leaving the cache as it was. Backends may batch this (`lm.branch_logits`); any backend can do it
    one continuation at a time with prefill and trim."""
    batched = getattr(lm, "branch_logits", None)
    return batched(sequences) if batched is not None else serial_branch_logits(lm, sequences)


def serial_branch_logits(lm: CausalLM, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """`branch_logits` one continuation at a time: prefill it, keep its last logits, trim back."""
    length = lm.length
    rows = []
    for sequence in sequences:
        rows.append(lm.prefill(sequence)[-1])
        lm.trim(length)
    return np.stack(rows)


def adopt_branch(lm: CausalLM, tokens: Sequence[int]) -> bool:
    """Extend the cache by `tokens` from a branch the backend scored since the cache last changed
    (`lm.adopt_branch`), without running the model; False, the cache untouched, where the backend keeps
    no branches or no longer has this one."""
    adopt = getattr(lm, "adopt_branch", None)
    return bool(adopt is not None and adopt(tokens))


def greedy_tokens(lm: CausalLM, prompt: Sequence[int], steps: int) -> list[int]:
    """Greedy continuation of `prompt` through the cache: one prefill, then single-token decodes."""
    lm.trim(0)
    logits = lm.prefill(prompt)[-1]
    tokens = []
    for step in range(steps):
        tokens.append(int(np.argmax(logits)))
        if step + 1 < steps:
            logits = lm.decode(tokens[-1])
    return tokens
