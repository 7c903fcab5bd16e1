"""convert/coreml_fast.py and convert/coreml_parallel.py, piece by piece: the coremltools version the fast paths were
checked against, each replacement against the coremltools code it stands in for, the plain path on any other
version, and the forked conversion's results and failures. That whole packages come out the same on the fast, plain
and side-by-side paths is checked in test_coreml_packages.py and test_coreml_compressed.py."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from canonical.errors import ConversionError
from convert import coreml_fast, coreml_parallel


def test_coremltools_is_the_version_the_fast_paths_were_checked_against():
    """Fails loudly on a coremltools upgrade: the fast paths replace coremltools internals of one version. Re-run
    the package identity tests and the profile (benchmarks/conversion_profile.py --plain), re-read the replaced
    functions against the new version's, then move PINNED_VERSION (until then conversion takes the plain path)."""
    import coremltools as ct

    assert ct.__version__ == coreml_fast.PINNED_VERSION, (
        f"coremltools {ct.__version__} is installed, but convert/coreml_fast.py was written and checked against "
        f"{coreml_fast.PINNED_VERSION}: conversion now takes the plain (slower) path; re-check the fast paths"
    )


def _patched_attributes():
    from coremltools.converters.mil.mil.block import Block
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    return (
        FP16ComputePrecision.__dict__["fp16_overflow"],
        FP16ComputePrecision.__dict__["_check_underflow_to_zero"],
        Block.__dict__["_propagate_nonreplaceable_vars"],
        PassPipelineManager.__dict__["apply_pipeline"],
        sys.modules["coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication"].np,
    )


def test_the_fast_paths_are_taken_inside_the_context_only(monkeypatch):
    before = _patched_attributes()
    with coreml_fast.faster_conversion() as fast:
        assert fast == coreml_fast.pinned()
        during = _patched_attributes()
    assert all(a is b for a, b in zip(_patched_attributes(), before, strict=True))
    assert all(a is not b for a, b in zip(during, before, strict=True)) == fast
    monkeypatch.setattr(coreml_fast, "pinned", lambda: False)
    with coreml_fast.faster_conversion() as fast:
        assert fast is False
        assert all(a is b for a, b in zip(_patched_attributes(), before, strict=True))


# Constants at fp16's edges, beyond it, infinite, NaN next to an overflowing value, scalar.
EDGES = [[1.0, -2.0], [65504.0, -65504.0], [65505.0, 1.0], [-7e4, 0.5], [np.inf, 1.0], [-np.inf, 7e4],
         [np.nan, 1.0], [np.nan, 7e4], [3e38, 1.0], 7e4, 0.25]  # fmt: skip


def test_fp16_overflow_answers_as_coremltools_does():
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))])
    def program(x):
        return [mb.add(x=x, y=np.float32(v) if np.isscalar(v) else np.array(v, np.float32)) for v in EDGES]

    original = FP16ComputePrecision.fp16_overflow
    fast = coreml_fast._fp16_overflow(original)
    ops = [op for op in program.functions["main"].operations if op.op_type == "add"]
    assert len(ops) == len(EDGES)
    answers = [original(op) for op in ops]
    assert [fast(op) for op in ops] == answers
    assert answers.count(True) == 5  # 65505, -7e4, 7e4 beside -inf, 7e4 beside NaN, 7e4


def test_constants_compare_as_coremltools_compares_them():
    allclose = coreml_fast._NumpyComparingEqualFirst.allclose
    a = np.arange(300, dtype=np.float16)
    pairs = [(a, a.copy()), (a, a + np.float16(1)), (a, np.where(a == 5, np.float16(5.001), a)),
             (np.array([np.nan, 1.0]), np.array([np.nan, 1.0])), (np.array([np.inf]), np.array([np.inf])),
             (np.array([1e-13, 0.0]), np.array([0.0, 0.0]))]  # fmt: skip
    for x, y in pairs:
        assert allclose(x, y, rtol=0.0, atol=1e-12) == np.allclose(x, y, rtol=0.0, atol=1e-12)


def test_nonreplaceable_vars_as_coremltools_sets_them():
    """Downstream of a compressed weight (constexpr_*), vars keep the set the original propagation gives them; in
    a program without one, every set is empty (here one left over is cleared)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    def build():
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4))], opset_version=ct.target.iOS16)
        def program(x):
            weight = mb.constexpr_affine_dequantize(
                quantized_data=np.ones((2, 4), np.int8), scale=np.float32(0.5), zero_point=np.int8(0), axis=0
            )
            return mb.relu(x=mb.add(x=x, y=weight))

        return program

    def sets(program):  # by op type: op names carry a process-wide counter
        return [(op.op_type, sorted(v.op.op_type for v in op.outputs[0].nonreplaceable_vars_upstream))
                for op in program.functions["main"].operations]  # fmt: skip

    expected = sets(build())
    assert [t for t, upstream in expected if upstream] == ["constexpr_affine_dequantize", "add", "relu"]
    with coreml_fast.faster_conversion():
        assert sets(build()) == expected

        @mb.program(input_specs=[mb.TensorSpec(shape=(2,))])
        def plain(x):
            return mb.relu(x=x)

        relu = plain.functions["main"].operations[-1]
        relu.outputs[0].nonreplaceable_vars_upstream = {relu.outputs[0]}
        with plain.functions["main"]:
            pass
        assert relu.outputs[0].nonreplaceable_vars_upstream == set()


def _write(path):
    path.write_text("decode")


def _refuse(path):
    raise ConversionError("coremltools could not convert the model: an op it lacks")


def _die(path):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="the functions convert side by side on Linux only")
def test_a_forked_conversion_reports_its_result_and_its_failure(tmp_path):
    assert coreml_parallel.ForkedConversion(_write, tmp_path / "a").result().read_text() == "decode"
    with pytest.raises(ConversionError, match=r"^coremltools could not convert the model: an op it lacks$"):
        coreml_parallel.ForkedConversion(_refuse, tmp_path / "b").result()
    with pytest.raises(ConversionError, match=r"process died \(exit code -9\)"):
        coreml_parallel.ForkedConversion(_die, tmp_path / "c").result()


def test_side_by_side_only_where_it_is_safe_and_pays(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert coreml_parallel.why_not_parallel(1) == "forking a converter is not safe on darwin"
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(coreml_parallel, "_available_memory", lambda: 10 * 2**30)
    if len(os.sched_getaffinity(0)) >= 2:
        assert coreml_parallel.why_not_parallel(2**30) is None
    assert coreml_parallel.why_not_parallel(2 * 2**30) == "not enough free memory for two conversions"


@pytest.mark.skipif(sys.platform != "linux", reason="the functions convert side by side on Linux only")
def test_the_forked_conversion_ends_with_its_parent(tmp_path):
    """A parent killed outright (SIGKILL: nothing of it runs) takes its child along: no converter is left writing
    into a staging folder that the next conversion will remove."""
    import subprocess
    import time

    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from convert.coreml_parallel import ForkedConversion\n"
        "def convert(path):\n"
        "    path.write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        f"ForkedConversion(convert, Path({str(tmp_path / 'child')!r}))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    pid_file = tmp_path / "child"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its parent")
