"""`ondevice verify`: run a backend and the transformers reference on the same random token ids and
report how far apart they are, against the bounds of `parity.TOLERANCES`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from canonical.errors import InputError
from convert.checkpoint import Checkpoint, load_checkpoint
from convert.registry import family_of
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
    # Lossless formats must reproduce the reference's greedy tokens exactly; for lossy ones (bf16, quantized,
    # compressed) the agreement is reported and the bound is on the outputs' error.
    greedy_required: bool = True

    @property
    def greedy_match(self) -> bool | None:
        return None if self.greedy_ours is None else self.greedy_ours == self.greedy_reference

    @property
    def passed(self) -> bool:
        greedy_ok = self.greedy_match is not False or not self.greedy_required
        return all(c.within(self.tolerance) for c in self.comparisons) and greedy_ok


def check_seq_len(seq_len: int, max_positions: int, field_name: str) -> None:
    if seq_len < 1:
        raise InputError(f"sequence length must be at least 1, got {seq_len}")
    if seq_len > max_positions:
        raise InputError(
            f"sequence length {seq_len} exceeds the model's {max_positions} positions ({field_name})"
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
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, cfg.max_positions)
    check_seq_len(seq_len, cfg.max_positions, f"{family_of(cfg).positions_field} in config.json")
    report = VerifyReport(str(ckpt.directory), ckpt.model_type, backend, dtype, seq_len, TOLERANCES[dtype])
    rng = np.random.default_rng(seed)
    ours, reference = load_backend(backend, ckpt, dtype=dtype), load_reference(ckpt)
    if cfg.is_causal:
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
    if getattr(cfg, "type_vocab_size", 0) > 1:
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


# Compressed packages carry quantisation error on top of fp16 rounding. Bounds are the error measured
# on our tiny random-init GPT-2 (2 layers, 64 wide, initializer_range 0.2: an adverse case, every
# weight matters) with a margin; tests/test_coreml_convert.py states each measured figure.
COMPRESSED_TOLERANCES = {
    "int8": Tolerance(rel_max_abs=5e-2, cosine=0.999),  # measured 2.9e-2, 0.99969
    "palettize6": Tolerance(rel_max_abs=0.15, cosine=0.99),  # measured 0.104, 0.99611
    "int4": Tolerance(rel_max_abs=0.5, cosine=0.9),  # measured 0.410, 0.95442 (tables at int8)
    "palettize4": Tolerance(rel_max_abs=0.6, cosine=0.9),  # measured 0.385, 0.94974 (tables at 6 bits)
}


def verify_package(package: str, reference: str | Checkpoint, seq_len: int | None = None, seed: int = 0,
                   greedy_steps: int = 16, use_coreml: bool | None = None) -> VerifyReport:
    """Like `verify`, for a written Core ML package (Core ML on a Mac, the numpy evaluator elsewhere)."""
    from ondevice.backends.coreml import load_package

    ckpt = reference if isinstance(reference, Checkpoint) else load_checkpoint(reference)
    ours = load_package(package, use_coreml=use_coreml)
    if type(ours.config) is not type(ckpt.config) or ours.config.vocab_size != ckpt.config.vocab_size:
        raise InputError(f"{package} was converted from a {ours.meta['architecture']} model that does not match "
                         f"the reference {ckpt.directory}")
    precision, compression = ours.meta["precision"], ours.meta["compression"]
    # Core ML state is always fp16, so an fp32 package with a state cache holds fp16 keys and values.
    stored = "fp16" if ours.meta.get("kv_cache") == "state" else precision
    tolerance = COMPRESSED_TOLERANCES.get(compression, TOLERANCES[stored])
    causal = ckpt.config.is_causal
    longest = ours.capacity - greedy_steps if causal else max(ours.lengths)
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, longest)
    check_seq_len(seq_len, longest, "the package's context minus greedy steps" if causal else "the package's seq_lens")
    backend = f"coreml ({ours.runner.device})" + (f", {compression}" if compression != "none" else "")
    report = VerifyReport(str(ckpt.directory), ckpt.model_type, backend, precision, seq_len, tolerance,
                          greedy_required=compression == "none")
    rng = np.random.default_rng(seed)
    if causal:
        _verify_causal_lm(report, ours, load_reference(ckpt), rng, greedy_steps)
    else:
        _verify_encoder(report, ours, load_reference(ckpt), rng)
    return report


# Bounds for an MLX export in a reduced format, as tests/test_mlx_parity.py asserts them (measured there:
# bf16 1.6e-2 / 0.99991, 8-bit 3.1e-2 / 0.99976, 4-bit 0.46 / 0.931 on GPT-2 logits).
MLX_EXPORT_TOLERANCES = {
    "bf16": Tolerance(rel_max_abs=5e-2, cosine=0.9995),
    "q8": Tolerance(rel_max_abs=8e-2, cosine=0.999),
    "q4": Tolerance(rel_max_abs=0.9, cosine=0.85),
}


def verify_mlx_export(directory: str, reference: str | Checkpoint, seq_len: int | None = None, seed: int = 0,
                      greedy_steps: int = 16) -> VerifyReport:
    """Like `verify`, for a directory written by `ondevice convert --to mlx`, against its source checkpoint."""
    from convert.mlx_checkpoint import load_mlx_checkpoint
    from ondevice.backends.mlx import load as load_mlx

    exported = load_mlx_checkpoint(directory)
    ckpt = reference if isinstance(reference, Checkpoint) else load_checkpoint(reference)
    if exported.config != ckpt.config:
        raise InputError(f"{directory} was exported from a model whose config differs from the reference "
                         f"{ckpt.directory}")
    quantization = exported.quantization
    precision = f"q{quantization['bits']}" if quantization else exported.dtype
    tolerance = MLX_EXPORT_TOLERANCES.get(precision, TOLERANCES.get(precision))
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, ckpt.config.max_positions)
    check_seq_len(seq_len, ckpt.config.max_positions, f"{family_of(ckpt.config).positions_field} in config.json")
    report = VerifyReport(str(ckpt.directory), ckpt.model_type, "mlx export", precision, seq_len, tolerance,
                          greedy_required=precision in ("fp32", "fp16"))
    ours, rng = load_mlx(exported, dtype=None), np.random.default_rng(seed)
    if ckpt.config.is_causal:
        _verify_causal_lm(report, ours, load_reference(ckpt), rng, greedy_steps)
    else:
        _verify_encoder(report, ours, load_reference(ckpt), rng)
    return report
