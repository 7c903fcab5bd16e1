"""`ondevice verify`: run a backend and the transformers reference on the same random token ids and
report how far apart they are, against the bounds of `parity.TOLERANCES` (one per format: fp32, fp16, each
Core ML compression, each reduced MLX format).

Outputs with non-finite values (NaN, inf) fail outright, and greedy agreement is then not reported: argmax
of NaN logits "agrees" with anything. So do reference outputs that carry nothing to agree with (constant, all
zero, or non-finite: a checkpoint whose weights compute nothing), whatever the cosine of two of them says.
A Core ML package is checked against the sha256 of its weights that conversion recorded before anything runs
(`coreml_runtime/integrity.py`). Our model runs first and is freed before the reference loads, so the two are
never in memory together."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canonical.errors import InputError
from convert.checkpoint import Checkpoint, load_checkpoint
from ondevice.backends import load_backend
from ondevice.parity import LOSSLESS, TOLERANCES, Comparison, Tolerance, compare
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
    # Our outputs holding NaN or inf: name -> how many values (any at all fails, and greedy is not compared).
    nonfinite: dict[str, int] = field(default_factory=dict)
    # Reference outputs that carry nothing to compare (constant, non-finite): name -> what is wrong with them.
    uninformative: dict[str, str] = field(default_factory=dict)

    @property
    def greedy_match(self) -> bool | None:
        if self.greedy_ours is None or self.nonfinite or self.uninformative:
            return None
        return self.greedy_ours == self.greedy_reference

    @property
    def passed(self) -> bool:
        greedy_ok = self.greedy_match is not False or not self.greedy_required
        return (
            all(c.within(self.tolerance) for c in self.comparisons)
            and greedy_ok
            and not self.nonfinite
            and not self.uninformative
        )


def check_seed(seed: int) -> None:
    if seed < 0:
        raise InputError(f"--seed {seed}: must be 0 or more")


def _count_nonfinite(report: VerifyReport, name: str, values: np.ndarray) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        report.nonfinite[name] = report.nonfinite.get(name, 0) + bad


def uninformative(values: np.ndarray) -> str | None:
    """Why a reference output carries nothing to agree with, or None: non-finite values, one value throughout, or
    one value along the last axis at every position (logits that rank no token above another)."""
    values = np.asarray(values, dtype=np.float64)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        return f"hold {bad} NaN or inf values"
    if values.size and np.ptp(values) == 0:
        return f"are constant (every value {values.flat[0]:g})"
    if values.ndim >= 2 and values.shape[-1] > 1 and (np.ptp(values, axis=-1) == 0).all():
        return "are constant along their last axis at every position"
    return None


def _compare_with_reference(report: VerifyReport, name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    """Compare, and record a reference output that no comparison can judge against."""
    why = uninformative(reference)
    if why:
        report.uninformative[name] = why
    report.comparisons.append(compare(name, ours, reference))


class _Watched:
    """A CausalLM whose every logits are checked for NaN and inf (counted under "logits" in the report)."""

    def __init__(self, lm, report: VerifyReport):
        self._lm, self._report = lm, report

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def prefill(self, ids):
        logits = self._lm.prefill(ids)
        _count_nonfinite(self._report, "logits", np.asarray(logits))
        return logits

    def decode(self, token):
        logits = self._lm.decode(token)
        _count_nonfinite(self._report, "logits", np.asarray(logits))
        return logits


def check_seq_len(seq_len: int, max_positions: int, field_name: str) -> None:
    if seq_len < 1:
        raise InputError(f"sequence length must be at least 1, got {seq_len}")
    if seq_len > max_positions:
        raise InputError(f"sequence length {seq_len} exceeds the model's {max_positions} positions ({field_name})")


def verify(
    checkpoint: str | Checkpoint,
    backend: str = "torch-ane",
    seq_len: int | None = None,
    dtype: str = "fp32",
    seed: int = 0,
    greedy_steps: int = 16,
) -> VerifyReport:
    from convert.checkpoint import is_mlx_directory

    check_seed(seed)
    if not isinstance(checkpoint, Checkpoint) and is_mlx_directory(checkpoint):
        if backend != "mlx":
            raise InputError(
                f"{checkpoint}: an MLX directory written by 'ondevice convert --to mlx' runs on the mlx "
                f"backend, not {backend}; it is verified against the checkpoint it came from"
            )
        return verify_mlx_export(checkpoint, None, seq_len=seq_len, seed=seed, greedy_steps=greedy_steps)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = ckpt.config
    seq_len = min(DEFAULT_SEQ_LEN, cfg.max_positions) if seq_len is None else seq_len
    check_seq_len(seq_len, cfg.max_positions, f"{cfg.positions_field} in config.json")
    report = VerifyReport(str(ckpt.directory), ckpt.model_type, backend, dtype, seq_len, TOLERANCES[dtype])
    rng = np.random.default_rng(seed)
    ours = load_backend(backend, ckpt, dtype=dtype)
    against = _run_causal_lm(report, ours, rng, greedy_steps) if cfg.is_causal else _run_encoder(report, ours, rng)
    del ours
    _released()
    against(load_reference(ckpt))
    return report


def _run_causal_lm(report: VerifyReport, ours, rng, steps: int) -> Callable[[Any], None]:
    """Run our model on verify's prompt, then its greedy steps; return what compares the reference with those
    outputs. Our model is not needed again, so the caller frees it before the reference loads: the two are never
    resident together (a 3B model in fp32 is 12 GB each)."""
    cfg = ours.config
    watched = _Watched(ours, report)
    ids = rng.integers(0, cfg.vocab_size, size=report.seq_len).tolist()
    logits = watched.prefill(ids)
    steps = min(steps, cfg.max_positions - 1)
    prompt = ids[: min(len(ids), cfg.max_positions - steps)]
    before_greedy = dict(report.nonfinite)
    greedy = None if report.nonfinite else greedy_tokens(watched, prompt, steps)
    del watched

    def against(reference) -> None:
        _compare_with_reference(report, "logits", logits, reference.prefill(ids))
        if greedy is None or report.uninformative:
            # greedy agreement on NaN or constant logits means nothing: not compared (nor our greedy steps counted)
            report.nonfinite = before_greedy
            return
        report.greedy_ours = greedy
        report.greedy_reference = greedy_tokens(reference, prompt, steps)

    return against


def _run_encoder(report: VerifyReport, ours, rng) -> Callable[[Any], None]:
    """Run our encoder on verify's batch; return what compares the reference with its outputs (see
    `_run_causal_lm`)."""
    cfg = ours.config
    batch, seq = 2, report.seq_len
    input_ids = rng.integers(0, cfg.vocab_size, size=(batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq - seq // 4 :] = 0  # the second row ends in padding
    types = None
    if getattr(cfg, "type_vocab_size", 0) > 1:
        types = np.zeros((batch, seq), dtype=np.int64)
        types[:, seq // 2 :] = 1
    got = ours.encode(input_ids, mask, types)

    def against(reference) -> None:
        want = reference.encode(input_ids, mask, types)
        valid = mask.astype(bool)
        for name in ("hidden", "pooled", "sentence_embedding", "mlm_logits"):
            if name not in want:
                continue
            a, b = got[name], want[name]
            if a.ndim == 3:  # per-token outputs: compare real tokens only
                a, b = a[valid], b[valid]
            _count_nonfinite(report, name, np.asarray(a))
            _compare_with_reference(report, name, a, b)

    return against


def _released() -> None:
    """Return what the model just dropped to the allocator before the next one loads."""
    gc.collect()


def verify_package(
    package: str,
    reference: str | Checkpoint,
    seq_len: int | None = None,
    seed: int = 0,
    greedy_steps: int = 16,
    use_coreml: bool | None = None,
) -> VerifyReport:
    """Like `verify`, for a written Core ML package (Core ML on a Mac, the numpy evaluator elsewhere).
    The package's weights are checked against the sha256 recorded at conversion first."""
    from convert.checkpoint import is_mlx_directory
    from coreml_runtime.integrity import check_package_weights
    from ondevice.backends.coreml import load_package

    check_seed(seed)
    check_package_weights(package)
    if not isinstance(reference, Checkpoint) and is_mlx_directory(reference):
        raise InputError(
            f"{reference}: --reference takes the Hugging Face checkpoint a package came from, not an MLX directory"
        )
    ckpt = reference if isinstance(reference, Checkpoint) else load_checkpoint(reference)
    ours = load_package(package, use_coreml=use_coreml)
    if type(ours.config) is not type(ckpt.config) or ours.config.vocab_size != ckpt.config.vocab_size:
        raise InputError(
            f"{package} was converted from a {ours.meta['architecture']} model that does not match "
            f"the reference {ckpt.directory}"
        )
    precision, compression = ours.meta["precision"], ours.meta["compression"]
    # Core ML state is always fp16, so an fp32 package with a state cache holds fp16 keys and values.
    stored = "fp16" if ours.meta.get("kv_cache") == "state" else precision
    tolerance = TOLERANCES[compression] if compression != "none" else TOLERANCES[stored]
    causal = ckpt.config.is_causal
    longest = ours.capacity - greedy_steps if causal else max(ours.lengths)
    if longest < 1:
        raise InputError(
            f"{package}: its context of {ours.capacity} tokens leaves no room for a prompt before the "
            f"{greedy_steps} greedy steps verify decodes (convert with --context {greedy_steps + 8} or "
            "more)"
        )
    seq_len = min(DEFAULT_SEQ_LEN, longest) if seq_len is None else seq_len
    check_seq_len(seq_len, longest, "the package's context minus greedy steps" if causal else "the package's seq_lens")
    backend = f"coreml ({ours.device})" + (f", {compression}" if compression != "none" else "")
    report = VerifyReport(
        str(ckpt.directory),
        ckpt.model_type,
        backend,
        precision,
        seq_len,
        tolerance,
        greedy_required=compression == "none",
    )
    rng = np.random.default_rng(seed)
    against = _run_causal_lm(report, ours, rng, greedy_steps) if causal else _run_encoder(report, ours, rng)
    del ours
    _released()
    against(load_reference(ckpt))
    return report


def verify_mlx_export(
    directory: str,
    reference: str | Path | Checkpoint | None,
    seq_len: int | None = None,
    seed: int = 0,
    greedy_steps: int = 16,
) -> VerifyReport:
    """Like `verify`, for a directory written by `ondevice convert --to mlx`, against its source checkpoint
    (`reference`; None: the checkpoint recorded at export, if it is still there)."""
    from convert.checkpoint import is_mlx_directory, mlx_source
    from convert.mlx_checkpoint import load_mlx_checkpoint
    from ondevice.backends.mlx import load as load_mlx

    check_seed(seed)
    if reference is None:
        reference = mlx_source(directory)
        if reference is None or not Path(reference).is_dir():
            where = f" ({reference} is gone)" if reference is not None else ""
            raise InputError(
                f"{directory}: an MLX directory is verified against the checkpoint it was exported "
                f"from{where}: pass --reference CHECKPOINT"
            )
    if not isinstance(reference, Checkpoint) and is_mlx_directory(reference):
        raise InputError(
            f"{reference}: --reference takes the Hugging Face checkpoint an export came from, not an MLX directory"
        )
    exported = load_mlx_checkpoint(directory)
    ckpt = reference if isinstance(reference, Checkpoint) else load_checkpoint(reference)
    if exported.config != ckpt.config:
        raise InputError(
            f"{directory} was exported from a model whose config differs from the reference {ckpt.directory}"
        )
    quantization = exported.quantization
    precision = f"q{quantization['bits']}" if quantization else exported.dtype
    tolerance = TOLERANCES[precision]
    seq_len = min(DEFAULT_SEQ_LEN, ckpt.config.max_positions) if seq_len is None else seq_len
    check_seq_len(seq_len, ckpt.config.max_positions, f"{ckpt.config.positions_field} in config.json")
    report = VerifyReport(
        str(ckpt.directory),
        ckpt.model_type,
        "mlx export",
        precision,
        seq_len,
        tolerance,
        greedy_required=precision in LOSSLESS,
    )
    ours, rng = load_mlx(exported, dtype=None), np.random.default_rng(seed)
    causal = ckpt.config.is_causal
    against = _run_causal_lm(report, ours, rng, greedy_steps) if causal else _run_encoder(report, ours, rng)
    del ours, exported
    _released()
    against(load_reference(ckpt))
    return report
