"""Core ML itself, on a Mac: prediction, state and the compute plan of our packages. On Linux these
skip (coremltools converts and saves there, but `predict`, `make_state`, compiling and
`MLComputePlan` need the macOS Core ML framework)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from convert.coreml import CoreMLOptions, convert_to_coreml

pytestmark = [
    pytest.mark.mac,
    pytest.mark.skipif(
        sys.platform != "darwin",
        reason="needs macOS: Core ML prediction, MLState and MLComputePlan are not available to coremltools on Linux",
    ),
]


@pytest.fixture(scope="module")
def gpt2_package(gpt2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mac") / "gpt2.mlpackage"
    return convert_to_coreml(gpt2_dir, out, CoreMLOptions(context=96, seq_lens=(16,)), progress=False)


@pytest.fixture(scope="module")
def minilm_package(minilm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mac") / "minilm.mlpackage"
    return convert_to_coreml(minilm_dir, out, CoreMLOptions(seq_lens=(32,)), progress=False)


def test_core_ml_greedy_matches_reference(gpt2_package, gpt2_dir):
    from ondevice.verify import verify_package

    report = verify_package(str(gpt2_package), str(gpt2_dir), seq_len=32, use_coreml=True)
    assert "Core ML" in report.backend
    assert report.passed, report.comparisons
    assert report.greedy_ours == report.greedy_reference


def test_core_ml_state_prefill_then_decode(gpt2_package):
    """MLState from one function feeds the other: decode continues the prefill's cache."""
    import coremltools as ct

    prefill = ct.models.MLModel(str(gpt2_package), function_name="prefill")
    decode = ct.models.MLModel(str(gpt2_package), function_name="decode")
    state = prefill.make_state()
    ids = np.arange(3, 19, dtype=np.int32)[None]
    prefill.predict({"input_ids": ids, "position": np.array([0], np.int32)}, state=state)
    out = decode.predict({"input_ids": np.array([[7]], np.int32), "position": np.array([16], np.int32)}, state=state)
    from coreml_runtime.mil_eval import MilProgram

    program = MilProgram(gpt2_package)
    mirror = program.make_state()
    program.predict({"input_ids": ids, "position": np.array([0])}, "prefill", mirror)
    want = program.predict({"input_ids": np.array([[7]]), "position": np.array([16])}, "decode", mirror)
    np.testing.assert_allclose(out["logits_0"], want["logits_0"], atol=5e-2 * np.abs(want["logits_0"]).max())


def test_core_ml_encoder_matches_reference(minilm_package, minilm_dir):
    from ondevice.verify import verify_package

    report = verify_package(str(minilm_package), str(minilm_dir), seq_len=32, use_coreml=True)
    assert report.passed, report.comparisons


def test_compute_plan_prefers_the_neural_engine(minilm_package):
    from coreml_runtime.ane_rules import compute_plan

    plan = compute_plan(minilm_package)
    assert isinstance(plan, list) and plan
    ane = sum("NeuralEngine" in device for _, _, device in plan)
    assert ane > len(plan) // 2, plan


@pytest.fixture(scope="module")
def gpt2_chunked(gpt2_dir, tmp_path_factory):
    from convert.coreml_chunks import convert_chunked

    out = tmp_path_factory.mktemp("mac") / "gpt2-chunked"
    return convert_chunked(gpt2_dir, out, CoreMLOptions(context=96, seq_lens=(16,)), chunks=2, progress=False)


def test_chunked_model_through_core_ml_matches_reference(gpt2_chunked, gpt2_dir):
    """Every part run by Core ML, one MLState per part shared by its prefill and decode, against transformers."""
    from ondevice.verify import verify_package

    report = verify_package(str(gpt2_chunked), str(gpt2_dir), seq_len=32, use_coreml=True)
    assert "Core ML" in report.backend
    assert report.passed, report.comparisons
    assert report.greedy_ours == report.greedy_reference
