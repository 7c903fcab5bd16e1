"""The Core ML test packages of GPT-2 and the BERT family, shared by test_coreml_convert.py (fp16 and fp32)
and test_coreml_compressed.py (int8, int4, palettized), which run side by side on two workers.

Each option value is converted once, on the tiniest models (not the cartesian product): a package per row of
VARIANTS, built lazily by the module that reads it. Bounds: fp16 packages must meet parity.TOLERANCES["fp16"]
(cosine >= 0.999, max error <= 2e-2 of the output's scale); fp32 packages with an io cache meet the fp32
bound; compressed packages must keep greedy agreement and meet the bounds in
parity.TOLERANCES, each set above the error measured here (stated per variant)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from convert.coreml import CoreMLOptions, convert_to_coreml
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from ondevice.parity import TOLERANCES
from ondevice.verify import verify_package

CONTEXT, PREFILL, SEQ = 96, 16, 32  # the greedy check needs SEQ + 16 steps <= CONTEXT

# name: (checkpoint fixture, options, constexpr op the compression must emit or None)
VARIANTS = {
    "gpt2-state-fp16": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,)), None),
    "gpt2-io-fp32-ios18": (
        "gpt2_dir",
        CoreMLOptions(dtype="fp32", kv_cache="io", context=CONTEXT, seq_lens=(PREFILL,)),
        None,
    ),
    "gpt2-io-ios17-int8": (
        "gpt2_dir",
        CoreMLOptions(kv_cache="io", target="iOS17", context=CONTEXT, seq_lens=(PREFILL,), compress="int8"),
        "constexpr_affine_dequantize",
    ),
    "gpt2-int8": (
        "gpt2_dir",
        CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="int8"),
        "constexpr_blockwise_shift_scale",
    ),
    "gpt2-int4": (
        "gpt2_dir",
        CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="int4"),
        "constexpr_blockwise_shift_scale",
    ),
    "gpt2-palettize4": (
        "gpt2_dir",
        CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="palettize4"),
        "constexpr_lut_to_dense",
    ),
    "gpt2-palettize6": (
        "gpt2_dir",
        CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="palettize6", target="macOS15"),
        "constexpr_lut_to_dense",
    ),
    "bert-mlm-enumerated": ("bert_dir", CoreMLOptions(seq_lens=(16, SEQ)), None),
    "distilbert-mlm": ("distilbert_dir", CoreMLOptions(seq_lens=(SEQ,), target="iOS16"), None),
    "minilm": ("minilm_dir", CoreMLOptions(seq_lens=(SEQ,)), None),
    "minilm-palettize6-ios16": (
        "minilm_dir",
        CoreMLOptions(seq_lens=(SEQ,), target="iOS16", compress="palettize6"),
        "constexpr_lut_to_dense",
    ),
}


FOUR_BIT = {"gpt2-int4": 3, "gpt2-palettize4": 9}  # measured greedy agreement out of 16 (see below)


def package_maker(root: Path, request: pytest.FixtureRequest) -> Callable[[str], tuple[Path, Path]]:
    """(package, checkpoint) by variant name, converted lazily (once each) under `root`; the checkpoint is the
    session fixture the variant names."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            fixture, options, _ = VARIANTS[name]
            checkpoint = request.getfixturevalue(fixture)
            built[name] = (
                convert_to_coreml(checkpoint, root / f"{name}.mlpackage", options, progress=False),
                checkpoint,
            )
        return built[name]

    return get


def _tolerance(name: str):
    options = VARIANTS[name][1]
    if options.compress != "none":
        return TOLERANCES[options.compress]
    return TOLERANCES["fp32" if options.dtype == "fp32" and options.kv_cache == "io" else "fp16"]


def check_package_matches_reference(packages, name: str) -> None:
    package, checkpoint = packages(name)
    report = verify_package(str(package), str(checkpoint), seq_len=SEQ)
    tol = _tolerance(name)
    assert report.tolerance == tol
    for c in report.comparisons:
        assert c.cosine >= tol.cosine and c.rel_max_abs <= tol.rel_max_abs, (name, c)
    if VARIANTS[name][0] == "gpt2_dir":
        assert len(report.greedy_ours) == 16
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        if name in FOUR_BIT:
            # Measured on this random model: int4 3/16, palettize4 9/16 free-running greedy tokens agree
            # (cosine 0.954 and 0.950). 16 levels per weight are too coarse for a 64-wide random model whose
            # weights all matter, and its logits are near-ties everywhere; tests/test_coreml_four_bit.py
            # measures 4-bit on the trained keyboard model instead. Full agreement is NOT met at 4 bits.
            assert same >= FOUR_BIT[name], (name, same)
        else:
            # Prefill, then 16 decode steps through the cache (state or io) reproduce the reference's tokens.
            assert report.greedy_ours == report.greedy_reference, name


def check_compression_emits_its_op(packages, name: str) -> None:
    package, _ = packages(name)
    program = MilProgram(package)
    ops = {op.op_type for fn in program.functions.values() for op in fn.operations}
    assert VARIANTS[name][2] in ops
    weights = inspect_package(package).weight_bytes
    compressed = {"int8", "uint8", "int4", "uint4", "uint6"} & set(weights)
    assert compressed, weights  # the blob holds compressed records


def check_ane_rules(packages, name: str) -> None:
    """Zero violations everywhere but GPT-2's decode function, whose every activation is (1, C, 1, 1):
    one token is a size-1 sequence axis in the (B, C, 1, S) layout, unavoidable for single-token decode."""
    package, _ = packages(name)
    report = inspect_package(package)
    fp32 = VARIANTS[name][1].dtype == "fp32"
    for v in report.violations:
        assert (v.function == "decode" and v.rule == "size-1 last axis") or (fp32 and v.rule == "non-fp16 compute"), v
    assert not [v for v in report.violations if v.function != "decode" and not fp32]
    assert not [v for v in report.violations if v.rule in ("rank > 4", "dimension > 16384", "not on ANE")]
