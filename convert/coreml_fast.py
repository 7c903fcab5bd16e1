"""Faster paths through coremltools for work it repeats, pinned to the coremltools version they were written
against (PINNED_VERSION): on any other version `faster_conversion()` changes nothing and conversion takes the plain
path. tests/test_coreml_fast.py checks that both paths write the same packages (weight.bin byte for byte, the same
program) and fails loudly when coremltools is not the pinned version, so an upgrade means re-checking these.

What is repeated, measured by `python -m benchmarks.conversion_profile` (docs/measurements.md has the figures):
- `add_fp16_cast` asks, for every op and every fp32 constant it reads, whether a value overflows fp16, by
  `np.abs`, `np.where` and fancy indexing over the whole constant: for a model's weights that is most of the pass
  pipeline's time (18 of 25 s for GPT-2 124M). `fp16_overflow` below answers the same question from the
  constant's minimum and maximum, and only where those lie outside fp16's range asks the original.
- `PassPipelineManager.apply_pipeline` validates the whole program after each of ~100 passes (13 of 73 s for
  GPT-2 124M, 36 of 131 s for a SmolLM2-135M shape). Validation checks the program's structure and changes
  nothing; here it runs once, after a pipeline's last pass.
- A multifunction package was saved function by function, read back from disk and merged by
  `ct.utils.save_multifunction`; `save_functions` merges the programs already in memory (the same
  deduplication of constants across functions, the same function descriptions) and writes the package once."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PINNED_VERSION = "9.0"
FP16_MAX = 65504.0


def pinned() -> bool:
    """Whether the installed coremltools is the version these paths were written and checked against."""
    import coremltools as ct

    return ct.__version__ == PINNED_VERSION


def _fp16_overflow(original):
    def fp16_overflow(op) -> bool:
        """`FP16ComputePrecision.fp16_overflow`: whether a finite fp32 constant input (|x| < 1e38) exceeds fp16's
        range. Where every constant's extremes lie within it, the answer is no without the original's per-element
        work; anything else (a value beyond fp16, an infinity, a NaN) is the original's to decide."""
        for inputs in op.inputs.values():
            for var in inputs if isinstance(inputs, list | tuple) else [inputs]:
                if var.op is not None and var.op.op_type == "const" and var.is_tensor_or_scalar_of(dtype="fp32"):
                    value = np.asarray(var.op.val.val)
                    if value.size and not (float(value.min()) >= -FP16_MAX and float(value.max()) <= FP16_MAX):
                        return original(op)
        return False

    return fp16_overflow


def _apply_pipeline_validating_once(prog, pass_pipeline) -> None:
    """`PassPipelineManager.apply_pipeline` of coremltools 9.0, the program validated before and after the
    pipeline rather than after every pass (with the essential-scope check its dead-code elimination asks for)."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    if pass_pipeline is None:
        raise ValueError("The pass_pipeline cannot be None.")
    pass_pipeline.validate()
    prog.validate()
    for pass_name in pass_pipeline.passes:
        graph_pass = PASS_REGISTRY[pass_name]
        graph_pass.set_options(pass_pipeline.get_options(pass_name))
        graph_pass(prog)
    prog.validate(check_essential_scope="common::dead_code_elimination" in pass_pipeline.passes)


def _skip_underflow_check_of_large_constants(original):
    def check_underflow_to_zero(self, new_var, var) -> None:
        """`FP16ComputePrecision._check_underflow_to_zero` looks only at constants under 400 elements, but learns a
        constant's size by flattening a copy of it (1.3 s for GPT-2 124M's weights): `np.size` answers the same."""
        if new_var.val is not None and var.val is not None and np.size(var.val) >= 400:
            return
        original(self, new_var, var)

    return check_underflow_to_zero


def _has_constexpr(block) -> bool:
    return any(op.op_type.startswith("constexpr_") or any(map(_has_constexpr, op.blocks)) for op in block.operations)


def _clear_nonreplaceable(block) -> None:
    for op in block.operations:
        for inner in op.blocks:
            _clear_nonreplaceable(inner)
        for var in op.outputs or ():
            if var.nonreplaceable_vars_upstream:
                var.nonreplaceable_vars_upstream = set()


def _propagate_nonreplaceable_vars(original):
    def propagate_nonreplaceable_vars(self) -> None:
        """`Block._propagate_nonreplaceable_vars`, run as every pass leaves a block, recomputes for every var the
        set of `constexpr_*` outputs upstream of it (a union of sets per op: 4 s for GPT-2 124M). In a function with
        no `constexpr_*` op (any program before compression) every such set is empty, which is set directly."""
        if self.outer_op is not None or _has_constexpr(self):
            original(self)
        else:
            _clear_nonreplaceable(self)

    return propagate_nonreplaceable_vars


class _NumpyComparingEqualFirst:
    """numpy for coremltools' constant deduplication, whose `np.allclose(a, b, rtol=0, atol=tiny)` on every pair of
    constants with the same shape and leading values (all weights, across a multifunction package's functions) is
    most of a merge's time: identical arrays, the usual case, are close, found by `np.array_equal` at a fraction
    of the cost; anything else gets the original comparison."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def allclose(a, b, *args, **kwargs) -> bool:
        return bool(np.array_equal(a, b)) or bool(np.allclose(a, b, *args, **kwargs))


@contextlib.contextmanager
def faster_conversion() -> Iterator[bool]:
    """While active, coremltools takes the faster paths above (yields True); on an unpinned version it yields
    False and changes nothing."""
    if not pinned():
        yield False
        return
    from coremltools.converters.mil.mil import block as block_module
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    # the module (its package exports the pass class under the same name)
    const_deduplication = importlib.import_module(
        "coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication"
    )
    precision, block = FP16ComputePrecision.__dict__, block_module.Block.__dict__
    patches = [
        (FP16ComputePrecision, "fp16_overflow", staticmethod(_fp16_overflow(precision["fp16_overflow"].__func__))),
        (FP16ComputePrecision, "_check_underflow_to_zero",
         _skip_underflow_check_of_large_constants(precision["_check_underflow_to_zero"])),
        (block_module.Block, "_propagate_nonreplaceable_vars",
         _propagate_nonreplaceable_vars(block["_propagate_nonreplaceable_vars"])),
        (PassPipelineManager, "apply_pipeline", staticmethod(_apply_pipeline_validating_once)),
        (const_deduplication, "np", _NumpyComparingEqualFirst()),
    ]  # fmt: skip
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield True
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def finish_program(program, fp16: bool) -> None:
    """What `ct.convert(..., convert_to="mlprogram")` does to a program after the passes that
    `convert_to="milinternal"` stops at: the mlprogram backend's passes and its last check. The program is then
    written once, with the package's other functions (`save_functions`) or on its own (`save_program`), where
    ct.convert would write it into a temporary package and the merge would write it again."""
    from coremltools.converters.mil.converter import _construct_other_pipelines
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline, PassPipelineManager

    main = PassPipeline()  # ct.convert's default pipeline, as it trims it for the requested precision
    if not fp16:
        main.remove_passes({"common::add_fp16_cast", "common::add_int16_cast"})
    _, backend = _construct_other_pipelines(main, "pytorch", "mlprogram")
    PassPipelineManager.apply_pipeline(program, backend)
    program._check_early_error_out_for_invalid_program()


def save_program(program, destination: Path, target) -> None:
    """Write one finished program (`finish_program`) as the package `destination` for deployment `target`."""
    import coremltools as ct
    from coremltools.converters.mil.converter import mil_convert

    program.skip_all_passes = True
    mil_convert(program, convert_to="mlprogram", convert_from="milinternal", specification_version=target.value,
                compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True, package_dir=str(destination))  # fmt: skip


def _program(function):
    """A function's program: converted here (a Program, or an MLModel holding its program), or read from the
    package another process wrote (convert/coreml_parallel.py), as `ct.utils.save_multifunction` reads every
    function."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil import Program
    from coremltools.models.utils import _SPECIFICATION_VERSION_IOS_18, _try_get_weights_dir_path

    if isinstance(function, Program):
        return function
    if function._mil_program is not None:
        return function._mil_program
    spec = function.get_spec()
    weights = _try_get_weights_dir_path(function.package_path)
    return milproto.load(spec, max(spec.specificationVersion, _SPECIFICATION_VERSION_IOS_18), weights)


def save_functions(functions: dict, destination: Path, target) -> None:
    """Write a multifunction package of `functions` (name -> a finished Program or an MLModel; the first is the
    default) for deployment `target` at `destination`: `ct.utils.save_multifunction` on the programs in memory,
    without saving each function and reading it back. Each function's interface is described from its program,
    as ct.convert describes a converted one."""
    import coremltools as ct
    from coremltools.converters.mil._deployment_compatibility import check_deployment_compatibility
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil import Program
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _SPECIFICATION_VERSION_IOS_18

    merged = Program()
    spec_version = max(_SPECIFICATION_VERSION_IOS_18, target.value)
    for name, function in functions.items():
        if not isinstance(function, Program):
            spec_version = max(spec_version, function.get_spec().specificationVersion)
        merged.add_function(name, _program(function).functions["main"])
    # Constants the functions share are stored once (weight sharing), as save_multifunction does.
    PASS_REGISTRY["common::const_deduplication"]._deduplicate_const_across_functions(merged)
    merged.default_function_name = next(iter(functions))
    merged.skip_all_passes = True
    merged.export_as_multifunction = True
    written = mil_convert(merged, convert_to="mlprogram", convert_from="milinternal",
                          specification_version=spec_version, compute_units=ct.ComputeUnit.CPU_ONLY,
                          skip_model_load=True, package_dir=str(destination))  # fmt: skip
    check_deployment_compatibility(written.get_spec(), "mlprogram", target)  # as ct.convert checks each function
