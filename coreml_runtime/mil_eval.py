"""A numpy evaluator of saved ML programs: runs a written `.mlpackage` on any machine, so a package
is checked against the reference where Core ML itself cannot run (Linux).

The program is rebuilt with coremltools' milproto loader (spec from the package, weights from its
blob file); each op then runs on numpy values. Most ops reuse their own `value_inference`, fed our
values through their input variables; the ops that lack one (conv, einsum, state, ...) or whose
numpy version is too slow are written here. Compressed weights (`constexpr_*`) use the ops'
`materialized_val_inference`.

Precision: each op computes in float32 on its inputs and its output is rounded to the dtype the
program declares for it, so an fp16 program is evaluated with fp16 rounding of every op's output.
The ANE may accumulate differently inside an op; this emulates the storage precision, not the
hardware's internal order of operations."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from canonical.errors import ConversionError

# Memory at billions of parameters (docs/measurements.md). Constants of at least SHARED_CONSTANT elements are kept
# once per program by content: a package's prefill and decode each load their own copy of every weight, and the
# second is let go as the package loads. The float32 copies every op computes on are kept, to save making them on
# every call, while all live programs' copies come to at most FLOAT32_CACHE_BYTES, and made afresh on each call past
# it: copies of float16 constants, and of the weights a compressed package's `constexpr_*` ops decompress to (kept
# in float32 only: a 3B model at int4 is 12.8 GB of float32 weights, and its evaluator held 17 GiB with the float16
# copies too). The budget leaves room for the reference, which runs after ours is freed (13.2 GiB at 3B).
SHARED_CONSTANT = 1 << 16
FLOAT32_CACHE_BYTES = 8 << 30
_cached_bytes = [0]  # bytes of float32 copies held by every live program

# Ops with no `value_inference` in coremltools, or whose reference implementation is too slow.
_KERNELS: dict[str, Callable] = {}


def _kernel(*names: str):
    def register(fn):
        for name in names:
            _KERNELS[name] = fn
        return fn

    return register


def _v(op, name, env):
    var = op.inputs.get(name)
    if var is None:
        return None
    return env.get(var.name, var.val)


@_kernel("conv")
def _conv(op, env):
    x, w, b = _v(op, "x", env), _v(op, "weight", env), _v(op, "bias", env)
    groups = int(_v(op, "groups", env) if op.inputs.get("groups") is not None else 1)
    strides = _v(op, "strides", env)
    pad = _v(op, "pad", env)
    if (
        w.ndim != 4
        or w.shape[2:] != (1, 1)
        or groups != 1
        or (strides is not None and any(s != 1 for s in strides))
        or (pad is not None and any(pad))
    ):
        raise ConversionError(
            f"mil_eval: op 'conv' ({op.name}) is supported as a 1x1, stride-1, ungrouped "
            f"convolution only; got weight {w.shape}, groups {groups}"
        )
    out = np.einsum("oc,bchw->bohw", w[:, :, 0, 0].astype(np.float32), x, optimize=True)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


@_kernel("linear")
def _linear(op, env):
    x, w, b = _v(op, "x", env), _v(op, "weight", env), _v(op, "bias", env)
    out = x @ w.T.astype(np.float32)
    return out if b is None else out + b


@_kernel("matmul")
def _matmul(op, env):
    x, y = _v(op, "x", env), _v(op, "y", env)
    if _v(op, "transpose_x", env):
        x = np.swapaxes(x, -1, -2)
    if _v(op, "transpose_y", env):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@_kernel("einsum")
def _einsum(op, env):
    values = [env.get(v.name, v.val) for v in op.inputs["values"]]
    return np.einsum(str(op.inputs["equation"].val), *values, optimize=True)


@_kernel("gelu")
def _gelu(op, env):
    x = _v(op, "x", env).astype(np.float64)
    mode = str(op.inputs["mode"].val) if op.inputs.get("mode") is not None else "EXACT"
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


@_kernel("cast")
def _cast(op, env):
    from coremltools.converters.mil.mil.types.type_mapping import string_to_nptype

    # The loader gives string constants as 0-d arrays, which the op's own value_inference rejects.
    return _v(op, "x", env).astype(string_to_nptype(str(op.inputs["dtype"].val)))


_REDUCTIONS = {
    "reduce_mean": np.mean,
    "reduce_sum": np.sum,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
}


@_kernel(*_REDUCTIONS)
def _reduce(op, env):
    # The ops' value_inference passes axes as an array, which numpy's reductions reject.
    axes = _v(op, "axes", env)
    axes = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
    keep = bool(_v(op, "keep_dims", env)) if op.inputs.get("keep_dims") is not None else False
    return _REDUCTIONS[op.op_type](_v(op, "x", env), axis=axes, keepdims=keep)


@_kernel("batch_norm")
def _batch_norm(op, env):
    # Emitted when a pass fuses our layer norm's elementwise tail (iOS 16/17 targets); channel axis 1.
    x = _v(op, "x", env)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = _v(op, "mean", env).reshape(shape), _v(op, "variance", env).reshape(shape)
    gamma, beta = _v(op, "gamma", env), _v(op, "beta", env)
    eps = float(_v(op, "epsilon", env)) if op.inputs.get("epsilon") is not None else 1e-5
    out = (x - mean) / np.sqrt(var + eps)
    out = out if gamma is None else out * gamma.reshape(shape)
    return out if beta is None else out + beta.reshape(shape)


@_kernel("shape")
def _shape(op, env):
    # Its value_inference reads the declared (possibly symbolic) shape; we have the real one.
    return np.array(np.shape(_v(op, "x", env)), dtype=np.int32)


@_kernel("silu")
def _silu(op, env):
    x = _v(op, "x", env)
    return x / (1.0 + np.exp(-x))


@_kernel("softmax")
def _softmax(op, env):
    x, axis = _v(op, "x", env), int(_v(op, "axis", env))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@_kernel("gather")
def _gather(op, env):
    x, indices = _v(op, "x", env), _v(op, "indices", env)
    axis = int(_v(op, "axis", env)) if op.inputs.get("axis") is not None else 0
    return np.take(x, indices.astype(np.int64), axis=axis)


class MilProgram:
    """A loaded package: its functions, their inputs, outputs and state declarations."""

    def __init__(self, package: str | Path):
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

        from coreml_runtime.package import root_model_path

        package = Path(package)
        spec_path = root_model_path(package)  # raises a one-line error for a broken manifest
        try:
            spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
            self.program = load_milproto(spec, spec.specificationVersion, str(spec_path.parent / "weights"))
        except Exception as exc:  # protobuf, blob and loader errors: the package is unreadable
            raise ConversionError(
                f"{package}: cannot load its ML program ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
            ) from None
        self.spec = spec
        self.functions = self.program.functions
        self._consts: dict[int, np.ndarray] = {}
        self._by_content: dict[tuple, np.ndarray] = {}
        # float32 copies of float16 constants, made on first use, keyed by the id of the cached constant (alive as
        # long as this program, so no other array can share its id): a weight is upcast once, not on every call.
        self._float32: dict[int, np.ndarray | None] = {}
        # Decompressed weights in float32, keyed by the op and the ids of its (shared) inputs: prefill's and decode's
        # ops decompressing the same constants find one array.
        self._decompressed: dict[tuple, np.ndarray] = {}
        self._held = [0]  # this program's share of the budget
        self._dead_after: dict[str, list[list[str]]] = {}
        weakref.finalize(self, _give_back, self._held)
        # Kept per op (not per name: two functions may use one name for different constants); the loader's copy per
        # function of each weight: one kept, now.
        for function in self.functions.values():
            for op in function.find_ops(op_type="const"):  # nested blocks too
                self._keep(op, self._shared(_as_declared(op.outputs[0].val, op.outputs[0]), op))

    def state_names(self, function: str) -> list[str]:
        from coremltools.converters.mil.mil import types

        return [n for n, v in self.functions[function].inputs.items() if types.is_state(v.sym_type)]

    def make_state(self, function: str | None = None) -> dict[str, np.ndarray]:
        """Zero-filled state, as `MLModel.make_state()` gives (Core ML leaves it uninitialised;
        our models mask every slot they have not written, so the initial value never matters)."""
        from coremltools.converters.mil.mil import types

        function = function or next(iter(self.functions))
        state = {}
        for name, var in self.functions[function].inputs.items():
            if types.is_state(var.sym_type):
                wrapped = var.sym_type.wrapped_type()
                state[name] = np.zeros(wrapped.get_shape(), dtype=types.nptype_from_builtin(wrapped.get_primitive()))
        return state

    def predict(
        self, inputs: dict[str, np.ndarray], function: str | None = None, state: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one function on `inputs`; `state` (from `make_state`) is updated in place."""
        from coremltools.converters.mil.mil import types

        function = function or ("main" if "main" in self.functions else next(iter(self.functions)))
        if function not in self.functions:
            raise ConversionError(f"no function {function!r} in this package (has: {', '.join(self.functions)})")
        fn = self.functions[function]
        env: dict[str, np.ndarray] = {}
        for name, var in fn.inputs.items():
            if types.is_state(var.sym_type):
                if state is None or name not in state:
                    raise ConversionError(f"function {function!r} needs state {name!r}: pass make_state()")
                env[name] = state[name]
            elif name not in inputs:
                raise ConversionError(f"function {function!r} needs input {name!r}")
            else:
                env[name] = np.asarray(inputs[name]).astype(types.nptype_from_builtin(var.dtype))
        for op, done in zip(fn.operations, self._last_uses(function), strict=True):
            self._run(op, env, state)
            for name in done:  # a value no later op reads: freed now, not when the function returns
                env.pop(name, None)
        return {var.name: np.asarray(env[var.name]) for var in fn.outputs}

    def _last_uses(self, function: str) -> list[list[str]]:
        """For each op of `function`, the values it is the last to read (the function's outputs never)."""
        if function not in self._dead_after:
            fn = self.functions[function]
            last: dict[str, int] = {}
            for i, op in enumerate(fn.operations):
                for var in op.get_flattened_inputs():
                    last[var.name] = i
            for var in fn.outputs:
                last.pop(var.name, None)
            for name in fn.inputs:  # inputs and states belong to the caller
                last.pop(name, None)
            dead: list[list[str]] = [[] for _ in fn.operations]
            for name, i in last.items():
                dead[i].append(name)
            self._dead_after[function] = dead
        return self._dead_after[function]

    def _run(self, op, env: dict, state: dict | None) -> None:
        kind = op.op_type
        if kind == "const":  # every const op, nested ones included, was kept as the program loaded
            env[op.outputs[0].name] = self._consts[id(op)]
            return
        if kind.startswith("constexpr_"):
            env[op.outputs[0].name] = self._decompress(op, env)
            return
        if kind == "read_state":
            assert state is not None  # its input is a state input of the function: `predict` refused None
            env[op.outputs[0].name] = state[op.inputs["input"].name].copy()
            return
        if kind == "coreml_update_state":
            assert state is not None  # as for read_state
            value = _as_declared(env[op.inputs["value"].name], op.inputs["state"])
            state[op.inputs["state"].name] = value
            env[op.outputs[0].name] = value
            return
        if kind in _KERNELS:
            results = _KERNELS[kind](op, self._float32_view(op, env))
        else:
            results = self._value_inference(op, env)
        results = results if isinstance(results, tuple | list) and len(op.outputs) > 1 else (results,)
        for var, value in zip(op.outputs, results, strict=True):
            env[var.name] = _as_declared(value, var)

    def _keep(self, op, value: np.ndarray) -> None:
        self._consts[id(op)] = value
        if value.dtype == np.float16 and id(value) not in self._float32:
            self._float32[id(value)] = None  # upcast on first use

    def _shared(self, value: np.ndarray, const) -> np.ndarray:
        """One array per distinct large constant of the program: another function's identical constant is this one
        (and a `const` op's own loaded copy is let go in its favour)."""
        if value.size < SHARED_CONSTANT:
            return value
        key = (value.dtype.str, value.shape, hashlib.blake2b(np.ascontiguousarray(value).data, digest_size=16).digest())
        shared = self._by_content.setdefault(key, value)
        if const is not None and shared is not value:
            loaded = getattr(const.outputs[0], "_sym_val", None)
            if loaded is not None and hasattr(loaded, "_val"):
                loaded._val = shared  # the loader's copy of the same bytes: freed
        return shared

    def _upcast(self, value: np.ndarray) -> np.ndarray:
        """float16 values as float32 (a constant's copy made once, within FLOAT32_CACHE_BYTES); anything else as it
        is."""
        value = np.asarray(value)
        if value.dtype != np.float16:
            return value
        if id(value) not in self._float32:
            return value.astype(np.float32)
        upcast = self._float32[id(value)]
        if upcast is None:
            upcast = value.astype(np.float32)
            if self._reserve(upcast.nbytes):
                self._float32[id(value)] = upcast
        return upcast

    def _decompress(self, op, env: dict) -> np.ndarray:
        """A `constexpr_*` op's weight as the program declares it (float16 rounding), held in float32, the form every
        op computes on (the same values: `_upcast` passes float32 through); kept within the budget."""
        key = (op.op_type, *(id(env[var.name]) for var in op.get_flattened_inputs() if var.name in env))
        if key in self._decompressed:
            return self._decompressed[key]
        if op.op_type == "constexpr_blockwise_shift_scale" and all(
            op.inputs[name].op.op_type == "const" for name in op.inputs
        ):
            value = _blockwise_shift_scale(_v(op, "data", env), _v(op, "scale", env), _v(op, "offset", env))
        else:
            value = op.materialized_val_inference()
        value = self._upcast(_as_declared(value, op.outputs[0]))
        if self._reserve(value.nbytes):
            self._decompressed[key] = value
        return value

    def _reserve(self, nbytes: int) -> bool:
        """Whether a float32 copy of `nbytes` may be kept within the budget (and if so, counted against it)."""
        if _cached_bytes[0] + nbytes > FLOAT32_CACHE_BYTES:
            return False
        _cached_bytes[0] += nbytes
        self._held[0] += nbytes
        return True

    def _float32_view(self, op, env: dict) -> dict:
        """Inputs of `op` upcast to float32: each op computes in float32 and rounds only its output."""
        return {var.name: self._upcast(env[var.name]) for var in op.get_flattened_inputs() if var.name in env}

    def _value_inference(self, op, env: dict):
        from coremltools.converters.mil.mil import types

        if not _has_value_inference(op):
            raise ConversionError(f"mil_eval: op '{op.op_type}' ({op.name}) is not supported by the evaluator")
        saved = []
        try:
            for var in op.get_flattened_inputs():
                if var.name in env:
                    value = self._upcast(env[var.name])
                    saved.append((var, var._sym_val, var._sym_type))
                    var._sym_val = _Boxed(value)
                    if types.is_tensor(var.sym_type):
                        # Shape-reading value_inference (expand_dims, reshape, ...) must see the real
                        # shape, not an enumerated program's symbolic one.
                        var._sym_type = types.tensor(var.sym_type.get_primitive(), value.shape)
            return op.value_inference()
        finally:
            for var, val, sym_type in saved:
                var._sym_val, var._sym_type = val, sym_type


def _blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """`constexpr_blockwise_shift_scale` as coremltools' `decompress` computes it, `scale * (data - offset)` in the
    scale's dtype, to the bit, without its full-size repeats of scale and offset or float16 arithmetic (which numpy
    runs element by element): each block broadcasts against its scale, and the float32 results are rounded to the
    scale's dtype wherever coremltools rounds. The product of two float16 values is exact in float32, so rounding it
    once gives the float16 product."""
    blocks = [d // s for d, s in zip(data.shape, scale.shape, strict=True)]
    split = [n for s, b in zip(scale.shape, blocks, strict=True) for n in (s, b)]  # (s0, b0, s1, b1, ...)
    x = data.astype(np.float32).reshape(split)

    def spread(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float32).reshape([n for s in v.shape for n in (s, 1)])

    if offset is not None:
        x = (x - spread(offset)).astype(scale.dtype).astype(np.float32)
    return (x * spread(scale)).astype(scale.dtype).reshape(data.shape)


class _Boxed:
    """Stands in for a builtin value instance: `Var.val` reads `_sym_val.val`."""

    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


def _has_value_inference(op) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    return type(op).value_inference is not Operation.value_inference


def _give_back(held: list[int]) -> None:
    """A program's float32 copies are gone with it: their bytes return to the shared budget."""
    _cached_bytes[0] -= held[0]


def _as_declared(value, var) -> np.ndarray:
    """Round/cast an op's output to the dtype the program declares for it (fp16 rounding); a value already of that
    dtype is returned as it is, not copied."""
    from coremltools.converters.mil.mil import types

    sym_type = var.sym_type.wrapped_type() if types.is_state(var.sym_type) else var.sym_type
    dtype = types.nptype_from_builtin(sym_type.get_primitive() if types.is_tensor(sym_type) else sym_type)
    return np.asarray(value, dtype=dtype)
