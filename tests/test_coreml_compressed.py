"""Compressed Core ML packages of every registered family (tests/packages.py): int8 (iOS 17's per-channel and iOS
18's per-block), int4 by rounding and by GPTQ, 4- and 6-bit palettization, each within parity.TOLERANCES of its
compression, emitting its compression op, and within the ANE rules; k-means once per package, as coremltools'."""

from __future__ import annotations

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
