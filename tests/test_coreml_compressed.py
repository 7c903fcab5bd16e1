"""Compressed Core ML packages of every registered family (tests/packages.py): int8 (iOS 17's per-channel and iOS
18's per-block), int4 by rounding and by GPTQ, 4- and 6-bit palettization, each within parity.TOLERANCES of its
compression, emitting its compression op, and within the ANE rules; k-means once per package, as coremltools'."""

from __future__ import annotations

import numpy as np
import pytest

from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.package import read_metadata
from tests.packages import (
    check_ane_rules,
    check_compression_emits_its_op,
    check_fast_path_writes_the_plain_package,
    check_matches_reference,
    package_maker,
)
from tests.packages import variants as package_variants

COMPRESSED = list(package_variants(compressed=True))


@pytest.fixture(scope="module")
def packages(tmp_path_factory, request, family_root):
    return package_maker(tmp_path_factory.mktemp("coreml-compressed"), request, family_root)


@pytest.mark.parametrize("name", COMPRESSED)
def test_package_matches_reference(packages, name):
    check_matches_reference(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_compression_emits_its_op(packages, name):
    check_compression_emits_its_op(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_ane_rules(packages, name):
    check_ane_rules(packages, name)


@pytest.mark.parametrize("name", ["gpt2-int8", "qwen2-tied-int4", "qwen2-tied-palettize4"])
def test_fast_path_writes_the_plain_package(packages, name, tmp_path):
    check_fast_path_writes_the_plain_package(packages, name, tmp_path)


def test_gptq_calibration_changes_the_blocks_only(packages):
    """GPTQ ran on the Llama blocks (RoPE passed for each window's positions): the calibrated package's block weights
    are uint4 on GPTQ's grid, and the head stays at int8."""
    calibrated, _ = packages("llama-int4-gptq")
    meta = read_metadata(calibrated)
    assert meta["calibration"] == "gptq:train.txt" and meta["compression"] == "int4"
    weights = inspect_package(calibrated).weight_bytes
    assert weights.get("uint4", 0) > 0 and weights.get("int8", 0) > 0


def test_vocabulary_tables_are_those_coremltools_metadata_names(gpt2_dir):
    """The tables kept at 8 or 6 bits are found in the converted program, without coremltools'
    `get_weights_metadata` (slow at billions of parameters); both give the same names, which are the token
    embedding's and the head chunks' constants."""
    import coremltools as ct
    import numpy as np
    import torch
    from coremltools.optimize import coreml as cto

    from convert.checkpoint import load_checkpoint
    from convert.coreml import CoreMLOptions, convert_function, plan_conversion
    from convert.coreml_compress import WEIGHT_THRESHOLD, is_vocabulary_table, vocabulary_tables
    from convert.coreml_modules import EmbedForExport
    from convert.registry import build_ane_model

    ckpt = load_checkpoint(gpt2_dir)
    plan = plan_conversion(ckpt.config, CoreMLOptions(context=32, seq_lens=(8,)))
    model = build_ane_model(ckpt.config, ckpt.weights)
    example = (torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    inputs = [
        ct.TensorType("input_ids", shape=(1, 8), dtype=np.int32),
        ct.TensorType("position", shape=(1,), dtype=np.int32),
    ]
    converted = convert_function(EmbedForExport(model.part_view(None)), example, inputs, ["hidden_out"], plan, False)
    found = vocabulary_tables(converted)
    assert found and all(is_vocabulary_table(name) for name in found)
    by_metadata = [n for n in cto.get_weights_metadata(converted, WEIGHT_THRESHOLD) if is_vocabulary_table(n)]
    assert sorted(found) == sorted(by_metadata)


@pytest.mark.parametrize("target", ["iOS18", "iOS16"])
def test_kmeans_once_gives_the_tables_of_coremltools_kmeans(tmp_path, target):
    """The palettized packages cluster each weight group once for all their functions (KMeansOnce, through
    coremltools' custom look-up-table hook and its own k-means routine): the same constants as `mode="kmeans"`,
    per group of 16 channels (iOS 18: scikit-learn's KMeans on 2,048 weights) and per tensor (before: kmeans1d
    on 16,384 float16 weights)."""
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.models.utils import load_spec
    from coremltools.optimize import coreml as cto

    from convert.coreml_compress import KMeansOnce, lut_granularity

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(128, 128)).astype(np.float32), rng.normal(size=128).astype(np.float32)
    target = getattr(ct.target, target)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 128))], opset_version=target)
    def program(x):
        return mb.linear(x=x, weight=weight, bias=bias)

    granularity = lut_granularity(target)
    kmeans = KMeansOnce()
    configs = {
        "kmeans": cto.OpPalettizerConfig(mode="kmeans", nbits=4, **granularity),
        "once": cto.OpPalettizerConfig(mode="custom", lut_function=kmeans.lut_function(4), **granularity),
    }
    written = {}
    for name, op in configs.items():
        model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True)
        path = tmp_path / f"{name}.mlpackage"
        cto.palettize_weights(model, cto.OptimizationConfig(global_config=op)).save(str(path))
        written[name] = (load_spec(str(path)).mlProgram, next(path.rglob("weight.bin")).read_bytes())
    assert kmeans._tables  # the custom hook ran
    assert written["once"][0] == written["kmeans"][0] and "constexpr_lut_to_dense" in str(written["once"][0])
    assert written["once"][1] == written["kmeans"][1]


def test_decompressed_weights_are_kept_once_and_only_within_the_budget(packages, monkeypatch):
    """A 3B model at int4 decompresses to 12.8 GB of float32 weights: the evaluator decompresses each weight once for
    prefill and decode together, keeps it only within FLOAT32_CACHE_BYTES and decompresses it again on each call past
    it, which changes no output: with no budget at all the logits are those of the default, bit for bit, through
    prefill and decode, and nothing is held."""
    from coreml_runtime import mil_eval
    from tests.packages import prefill_then_decode

    package, _ = packages("qwen2-tied-int4")
    monkeypatch.setattr(mil_eval, "SHARED_CONSTANT", 16)  # a tiny model's weights shared as a large one's are
    default, expected = prefill_then_decode(package)
    per_function = {f: len(default.functions[f].find_ops(op_type="constexpr_blockwise_shift_scale"))
                    for f in ("prefill", "decode")}  # fmt: skip
    assert per_function["prefill"] == per_function["decode"] == len(default._decompressed) > 0  # one per weight
    assert all(value.dtype == np.float32 for value in default._decompressed.values()) and default._held[0] > 0
    monkeypatch.setattr(mil_eval, "FLOAT32_CACHE_BYTES", 0)
    program, got = prefill_then_decode(package)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert program._decompressed == {} and program._held == [0]


@pytest.mark.parametrize("offset", [None, "integer", "fractional"])
def test_blockwise_decompression_is_coremltools_to_the_bit(offset):
    """The evaluator's own `constexpr_blockwise_shift_scale` (broadcast per block, float32 rounded where coremltools'
    float16 arithmetic rounds) gives coremltools' `decompress` bit for bit: int4 and int8 data, blocks of 32 along the
    input axis and per output channel, float16 and float32 scales, offsets integer-valued or not."""
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale as op

    from coreml_runtime.mil_eval import _blockwise_shift_scale

    rng = np.random.default_rng(0)
    for low, high, dtype in [(-8, 8, np.int8), (0, 16, np.uint8), (-128, 128, np.int8)]:
        for scale_dtype in (np.float16, np.float32):
            data = rng.integers(low, high, size=(96, 128)).astype(dtype)
            scale = (rng.standard_normal((96, 4)) * 0.02).astype(scale_dtype)
            shift = None
            if offset == "integer":
                shift = rng.integers(low, high, size=(96, 4)).astype(scale_dtype)
            elif offset == "fractional":
                shift = (rng.standard_normal((96, 4)) * 3.7).astype(scale_dtype)
            got = _blockwise_shift_scale(data, scale, shift)
            want = op.decompress(data, scale, shift)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
