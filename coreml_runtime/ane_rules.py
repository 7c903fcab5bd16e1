"""Static checks of a written package against the ANE rules (docs/ane-rules.md), and the facts
`ondevice inspect` prints: inputs, outputs, states, functions, op histogram, weight bytes by dtype.

Only what can be read from the program is checked; whether Core ML really places an op on the ANE
is known only on a Mac, from `MLComputePlan` (see `compute_plan`)."""

from __future__ import annotations

import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from canonical.errors import ConversionError

ANE_MAX_DIM = 16384  # rule 7: the ANE rejects larger dimensions
# Ops with no ANE implementation: Core ML runs them on the CPU (or GPU), splitting the graph.
NOT_ON_ANE = frozenset(
    {
        "while_loop",
        "cond",
        "scatter",
        "scatter_nd",
        "scatter_along_axis",
        "gather_nd",
        "non_zero",
        "topk",
        "argsort",
        "cumsum",
        "random_bernoulli",
        "random_categorical",
        "random_normal",
        "random_uniform",
        "non_maximum_suppression",
        "list_read",
        "list_write",
        "list_gather",
        "list_scatter",
        "list_length",
        "make_list",
    }
)
# Not computation: weights and their decompression happen at load time; state ops are memory.
_NOT_COMPUTE = ("const", "constexpr_", "read_state", "coreml_update_state")
_BLOB_SENTINEL = 0xDEADBEEF


@dataclass(frozen=True)
class Violation:
    function: str
    op: str
    op_type: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.function}] {self.op} ({self.op_type}): {self.rule}: {self.detail}"


@dataclass
class Feature:
    name: str
    shape: tuple
    dtype: str

    def __str__(self) -> str:
        return f"{self.name} {list(self.shape)} {self.dtype}"


@dataclass
class FunctionInfo:
    inputs: list[Feature] = field(default_factory=list)
    outputs: list[Feature] = field(default_factory=list)
    states: list[Feature] = field(default_factory=list)
    ops: Counter = field(default_factory=Counter)


@dataclass
class Inspection:
    package: Path
    metadata: dict[str, str]
    functions: dict[str, FunctionInfo]
    weight_bytes: dict[str, int]
    violations: list[Violation]


def _dtype_name(sym_type) -> str:
    from coremltools.converters.mil.mil import types

    if types.is_state(sym_type):
        sym_type = sym_type.wrapped_type()
    prim = sym_type.get_primitive() if types.is_tensor(sym_type) else sym_type
    return types.builtin_to_string(prim)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("fp", "bf"))


def _feature(name: str, var) -> Feature:
    return Feature(name, tuple(var.shape), _dtype_name(var.sym_type))


def check_function(name: str, fn, precision: str) -> list[Violation]:
    """The ANE rules, op by op, over the compute path of one function."""
    found = []
    for op in fn.operations:
        if op.op_type.startswith(_NOT_COMPUTE):
            continue
        if op.op_type in NOT_ON_ANE:
            found.append(Violation(name, op.name, op.op_type, "not on ANE", "no ANE implementation (runs on the CPU)"))
        for var in op.outputs:
            shape, dtype = tuple(var.shape), _dtype_name(var.sym_type)
            concrete = [d for d in shape if isinstance(d, int)]
            if len(shape) > 4:
                found.append(Violation(name, var.name, op.op_type, "rank > 4", f"shape {list(shape)} (rule 1)"))
            if any(d > ANE_MAX_DIM for d in concrete):
                found.append(
                    Violation(name, var.name, op.op_type, f"dimension > {ANE_MAX_DIM}", f"shape {list(shape)} (rule 7)")
                )
            if _is_float(dtype) and precision == "fp16" and dtype != "fp16":
                found.append(Violation(name, var.name, op.op_type, "non-fp16 compute", f"{dtype} (rule 6)"))
            if _is_float(dtype) and len(shape) == 4 and shape[-1] == 1:
                found.append(
                    Violation(
                        name,
                        var.name,
                        op.op_type,
                        "size-1 last axis",
                        f"shape {list(shape)}: padded to 64 bytes (rule 1)",
                    )
                )
    return found


def weight_bytes_by_dtype(spec, weights: Path) -> dict[str, int]:
    """Bytes in the weight blob by stored dtype, each blob record counted once (functions share them)."""
    from coremltools.proto import MIL_pb2

    records: dict[int, str] = {}

    def visit(value) -> None:
        if value.WhichOneof("value") == "blobFileValue":
            dtype = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
            records[value.blobFileValue.offset] = dtype

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                for value in op.attributes.values():
                    visit(value)
                for argument in op.inputs.values():  # iOS 18 constexpr ops bind blob values directly
                    for binding in argument.arguments:
                        if binding.WhichOneof("binding") == "value":
                            visit(binding.value)
    totals: Counter = Counter()
    with open(weights, "rb") as f:
        for offset, dtype in records.items():
            f.seek(offset)
            header = f.read(16)
            if len(header) < 16 or struct.unpack_from("<I", header, 0)[0] != _BLOB_SENTINEL:
                raise ConversionError(f"{weights}: corrupt weight record at offset {offset}")
            totals[dtype.lower()] += struct.unpack_from("<Q", header, 8)[0]
    return dict(totals)


def inspect_package(package: str | Path) -> Inspection:
    from coreml_runtime.mil_eval import MilProgram
    from coreml_runtime.package import read_metadata, weights_path

    package = Path(package)
    if not package.is_dir():
        raise ConversionError(f"{package}: no such Core ML package")
    program = MilProgram(package)
    metadata = read_metadata(package)
    precision = metadata.get("precision", "fp16")
    functions, violations = {}, []
    for name, fn in program.functions.items():
        info = FunctionInfo(ops=Counter(op.op_type for op in fn.operations))
        for input_name, var in fn.inputs.items():
            (info.states if input_name in program.state_names(name) else info.inputs).append(_feature(input_name, var))
        info.outputs = [_feature(v.name, v) for v in fn.outputs]
        functions[name] = info
        violations += check_function(name, fn, precision)
    weights = weights_path(package)
    sizes = weight_bytes_by_dtype(program.spec, weights) if weights.is_file() else {}
    return Inspection(package, metadata, functions, sizes, violations)


def compute_plan(package: str | Path) -> list[tuple[str, str, str]] | str:
    """(function, op type, preferred device) for every op, from Core ML's MLComputePlan (macOS 14.4+);
    on other systems, the reason it is unavailable."""
    if sys.platform != "darwin":
        return "compute plan skipped: MLComputePlan needs macOS 14.4+ (Core ML is not available on this system)"
    import coremltools as ct

    compiled = ct.models.utils.compile_model(str(package))
    plan = ct.models.compute_plan.MLComputePlan.load_from_path(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
    rows = []
    structure = plan.model_structure.program
    for fn_name, fn in structure.functions.items():
        for op in fn.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            device = "-" if usage is None else type(usage.preferred_compute_device).__name__
            rows.append((fn_name, op.operator_name, device))
    return rows
