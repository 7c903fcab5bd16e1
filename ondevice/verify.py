"""`ondevice verify`: run a backend and the transformers reference on the same random token ids and
report how far apart they are, against the bounds of `parity.TOLERANCES`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convert.checkpoint import Checkpoint, load_checkpoint
from convert.configs import GPT2Config
from convert.errors import InputError
from ondevice.backends import load_backend
from ondevice.parity import TOLERANCES, Comparison, Tolerance, compare
from ondevice.reference import load_reference
from ondevice.runtime import greedy_tokens

DEFAULT_SEQ_LEN = 64


@dataclass
class VerifyReport:
    checkpoint: str
    model_type: str
    backend: str
    dtype: str
    seq_len: int
    tolerance: Tolerance
    comparisons: list[Comparison] = field(default_factory=list)
    greedy_ours: list[int] | None = None
    greedy_reference: list[int] | None = None

    @property
    def greedy_match(self) -> bool | None:
        return None if self.greedy_ours is None else self.greedy_ours == self.greedy_reference

    @property
    def passed(self) -> bool:
        return all(c.within(self.tolerance) for c in self.comparisons) and self.greedy_match is not False


def check_seq_len(seq_len: int, max_positions: int, field_name: str) -> None:
    if seq_len < 1:
        raise InputError(f"sequence length must be at least 1, got {seq_len}")
    if seq_len > max_positions:
        raise InputError(
            f"sequence length {seq_len} exceeds the model's {max_positions} positions ({field_name} in config.json)"
        )


def verify(
    checkpoint: str | Checkpoint,
    backend: str = "torch-ane",
    seq_len: int | None = None,
    dtype: str = "fp32",
    seed: int = 0,
    greedy_steps: int = 16,
) -> VerifyReport:
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = ckpt.config
    is_gpt2 = isinstance(cfg, GPT2Config)
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, cfg.max_positions)
    check_seq_len(seq_len, cfg.max_positions, "n_positions" if is_gpt2 else "max_position_embeddings")
    report = VerifyReport(str(ckpt.directory), ckpt.model_type, backend, dtype, seq_len, TOLERANCES[dtype])
    rng = np.random.default_rng(seed)
    ours, reference = load_backend(backend, ckpt, dtype=dtype), load_reference(ckpt)
    if is_gpt2:
        _verify_causal_lm(report, ours, reference, rng, greedy_steps)
    else:
        _verify_encoder(report, ours, reference, rng)
    return report


def _verify_causal_lm(report: VerifyReport, ours, reference, rng, steps: int) -> None:
    cfg = ours.config
    ids = rng.integers(0, cfg.vocab_size, size=report.seq_len).tolist()
    report.comparisons.append(compare("logits", ours.prefill(ids), reference.prefill(ids)))
    steps = min(steps, cfg.max_positions - 1)
    prompt = ids[: min(len(ids), cfg.max_positions - steps)]
    report.greedy_ours = greedy_tokens(ours, prompt, steps)
    report.greedy_reference = greedy_tokens(reference, prompt, steps)


def _verify_encoder(report: VerifyReport, ours, reference, rng) -> None:
    cfg = ours.config
    batch, seq = 2, report.seq_len
    input_ids = rng.integers(0, cfg.vocab_size, size=(batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq - seq // 4 :] = 0  # the second row ends in padding
    types = None
    if cfg.type_vocab_size > 1:
        types = np.zeros((batch, seq), dtype=np.int64)
        types[:, seq // 2 :] = 1
    got, want = ours.encode(input_ids, mask, types), reference.encode(input_ids, mask, types)
    valid = mask.astype(bool)
    for name in ("hidden", "pooled", "sentence_embedding", "mlm_logits"):
        if name not in want:
            continue
        a, b = got[name], want[name]
        if a.ndim == 3:  # per-token outputs: compare real tokens only
            a, b = a[valid], b[valid]
        report.comparisons.append(compare(name, a, b))
