"""Compressed Core ML packages of the Llama family (tests/llama_packages.py): int8, int4 by rounding and by GPTQ,
4- and 6-bit palettization, each within ondevice.parity.TOLERANCES and emitting its compression op."""

from __future__ import annotations

import pytest

from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from coreml_runtime.package import read_metadata
from tests.llama_packages import (
    VARIANTS,
    check_matches_transformers,
    check_no_ane_rule_violations_in_prefill,
    checkpoint_maker,
    package_maker,
)

COMPRESSED = [name for name, (_, options) in VARIANTS.items() if options.compress != "none"]
EMITS = {
    "int8": "constexpr_blockwise_shift_scale",
    "int4": "constexpr_blockwise_shift_scale",
    "palettize4": "constexpr_lut_to_dense",
    "palettize6": "constexpr_lut_to_dense",
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    checkpoints = checkpoint_maker(tmp_path_factory.mktemp("llama-coreml"))
    return package_maker(tmp_path_factory.mktemp("llama-packages"), checkpoints)


@pytest.mark.parametrize("name", COMPRESSED)
def test_package_matches_transformers(packages, name):
    check_matches_transformers(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_no_ane_rule_violations_in_prefill(packages, name):
    check_no_ane_rule_violations_in_prefill(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_compression_emits_its_op(packages, name):
    package, _ = packages(name)
    ops = {op.op_type for fn in MilProgram(package).functions.values() for op in fn.operations}
    assert EMITS[VARIANTS[name][1].compress] in ops
    assert {"int8", "uint8", "int4", "uint4", "uint6"} & set(inspect_package(package).weight_bytes)


def test_gptq_calibration_changes_the_blocks_only(packages):
    """GPTQ ran on the Llama blocks (RoPE passed for each window's positions): the calibrated package's block
    weights are uint4 on GPTQ's grid, differ from rounding's, and the head stays at int8."""
    calibrated, _ = packages("llama-int4-gptq")
    rounded, _ = packages("qwen2-tied-int4")
    meta = read_metadata(calibrated)
    assert meta["calibration"] == "gptq:train.txt" and meta["compression"] == "int4"
    weights = inspect_package(calibrated).weight_bytes
    assert weights.get("uint4", 0) > 0 and weights.get("int8", 0) > 0
    assert inspect_package(rounded).weight_bytes.get("int4", 0) > 0  # rounding stores signed int4
