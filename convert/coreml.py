"""Write a Core ML `.mlpackage` from a checkpoint: torch.export of the ANE-layout model, ct.convert,
optional weight compression, metadata and tokenizer files, written atomically.

A causal LM (GPT-2, the Llama family) on iOS 18+ becomes one multifunction package, `prefill` (S tokens)
and `decode` (1 token), sharing one copy of the weights (rule 8). Before iOS 18 there is no multifunction
and no state, so the cache is model input/output and one `main` function takes enumerated lengths {1, S}.
Encoders take a fixed length or enumerated lengths (rule 7: static shapes). The family's ANE-layout model
comes from the registry."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from canonical.errors import ConversionError
from canonical.weights import weight_numel
from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint, load_checkpoint
from convert.coreml_compress import COMPRESSIONS, compress_functions
from convert.coreml_fast import faster_conversion, finish_program, save_functions, save_program
from convert.coreml_modules import CausalLMWithIOCache, CausalLMWithState, EncoderForExport, cache_shapes
from convert.coreml_package import write_package_extras
from convert.coreml_parallel import ForkedConversion, save_and_discard, why_not_parallel
from convert.registry import build_ane_model
from coreml_runtime.interface import (
    ATTENTION_MASK,
    CACHE_NAMES,
    INPUT_IDS,
    LOGITS,
    POSITION,
    TOKEN_TYPE_IDS,
    cache_output,
    logits_names,
)

PRECISIONS = ("fp16", "fp32")
KV_CACHES = ("state", "io")
DEFAULT_CONTEXT = 512
DEFAULT_PREFILL = 64
DEFAULT_ENCODER_LEN = 128


@dataclass(frozen=True)
class CoreMLOptions:
    dtype: str = "fp16"
    seq_lens: tuple[int, ...] = ()  # causal LMs: the prefill chunk (one value); encoders: one or more lengths
    context: int | None = None  # causal LMs: KV cache capacity in tokens
    target: str = "iOS18"
    kv_cache: str = "state"
    compress: str = "none"
    calibration_text: Path | None = None  # int4, causal LMs: GPTQ on this text (the training text, not evaluation text)
    allow_large: bool = False  # write an iOS package whose weights exceed IOS_WEIGHT_LIMIT anyway
    # causal LMs, iOS 18+: convert prefill and decode in two processes where that is safe and pays
    # (convert/coreml_parallel.py); the package is the same either way
    parallel: bool = False


TARGET_NAMES = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
# About what an iOS app can map and keep resident for one model (its memory limit is a few GB on 6-8 GB
# devices, shared with everything else the app holds); beyond it a package is refused unless allow_large.
IOS_WEIGHT_LIMIT = 1_000_000_000
# Bytes one stored weight takes, (vocabulary tables, everything else), per compression (`coreml_compress.py`
# keeps the tables at 8 bits for int4 and at 6 bits for palettize4). Scales, zero points and look-up tables
# add a few percent: int4 stores an fp16 scale and a 4-bit zero point per block of 32 weights.
_BYTES_PER_WEIGHT = {
    "int8": (1.0, 1.0),
    "int4": (1.0, 0.5 + 2.5 / 32),
    "palettize6": (0.75, 0.75),
    "palettize4": (0.75, 0.5),
}
_SMALLER_FIRST = ("int8", "palettize6", "int4", "palettize4")  # least lossy first


def _targets() -> dict[str, object]:
    import coremltools as ct

    return {name.lower(): getattr(ct.target, name) for name in TARGET_NAMES}


@dataclass(frozen=True)
class Plan:
    """Options checked against the model and the target: what will actually be built."""

    options: CoreMLOptions
    target: object  # ct.target member
    seq_lens: tuple[int, ...]
    context: int | None
    kv_cache: str | None  # None for encoders
    multifunction: bool


def plan_conversion(config, options: CoreMLOptions) -> Plan:
    """Refuse what the target cannot hold before any slow work is done."""
    import coremltools as ct

    target = _targets().get(options.target.lower())
    if target is None:
        raise ConversionError(f"unknown deployment target {options.target!r} (choose from: {', '.join(TARGET_NAMES)})")
    if options.dtype not in PRECISIONS:
        raise ConversionError(f"precision {options.dtype!r} is not available for Core ML (choose fp16 or fp32)")
    if options.compress not in COMPRESSIONS:
        raise ConversionError(f"unknown compression {options.compress!r} (choose from: {', '.join(COMPRESSIONS)})")
    ios18 = target >= ct.target.iOS18
    if options.compress == "int4" and not ios18:
        raise ConversionError(
            f"int4 per-block quantization needs iOS18/macOS15 (constexpr_blockwise_shift_scale); "
            f"target is {options.target}"
        )
    if options.allow_large and not options.target.lower().startswith("ios"):
        raise ConversionError(
            f"--allow-large applies to iOS targets (their ~1 GB limit); a {options.target} package "
            "has no such limit: drop --allow-large"
        )
    if options.calibration_text is not None:
        if options.compress != "int4" or not config.is_causal:
            raise ConversionError("calibration text applies to causal LMs with --compress int4 only")
        from convert.coreml_calibrate import read_calibration_text

        read_calibration_text(options.calibration_text)  # a missing, binary or empty file, before any slow work
    if any(n < 1 for n in options.seq_lens):
        raise ConversionError(f"sequence lengths must be positive, got {list(options.seq_lens)}")
    if config.is_causal:
        return _plan_causal(config, options, target, ios18)
    seq_lens = tuple(sorted(set(options.seq_lens))) or (min(DEFAULT_ENCODER_LEN, config.max_positions),)
    if seq_lens[-1] > config.max_positions:
        raise ConversionError(
            f"sequence length {seq_lens[-1]} exceeds the model's {config.max_positions} "
            f"positions ({config.positions_field})"
        )
    return Plan(options, target, seq_lens, None, None, multifunction=False)


def _plan_causal(config, options: CoreMLOptions, target, ios18: bool) -> Plan:
    if options.kv_cache not in KV_CACHES:
        raise ConversionError(f"unknown KV cache style {options.kv_cache!r} (choose state or io)")
    if options.kv_cache == "state" and not ios18:
        raise ConversionError(
            f"KV cache 'state' needs iOS18/macOS15 (Core ML state); target is {options.target}: use --kv-cache io"
        )
    context = options.context or min(DEFAULT_CONTEXT, config.max_positions)
    if not 1 < context <= config.max_positions:
        raise ConversionError(f"context {context} must be in 2..{config.max_positions} ({config.positions_field})")
    if len(options.seq_lens) > 1:
        raise ConversionError("a causal LM takes one prefill length (--seq-len once); decode is always 1 token")
    prefill = options.seq_lens[0] if options.seq_lens else min(DEFAULT_PREFILL, context)
    if prefill > context:
        raise ConversionError(f"prefill length {prefill} exceeds the context of {context} tokens")
    return Plan(options, target, (prefill,), context, options.kv_cache, multifunction=ios18)


def stored_parameters(config, weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(parameters of the vocabulary tables, of everything else) as a package stores them: a tied head once."""
    from convert.coreml_compress import is_vocabulary_table

    tied = getattr(config, "tie_word_embeddings", False)
    tables = other = 0
    for name in weights:
        if tied and name == "lm_head.weight":
            continue  # the same tensor as tok_embed.weight, one constant in the package
        if is_vocabulary_table(name):
            tables += weight_numel(weights, name)
        else:
            other += weight_numel(weights, name)
    return tables, other


def bytes_per_weight(dtype: str, compress: str) -> tuple[float, float]:
    """Bytes one stored weight takes: (in a vocabulary table, elsewhere)."""
    return _BYTES_PER_WEIGHT.get(compress, (2.0, 2.0) if dtype == "fp16" else (4.0, 4.0))


def estimated_weight_bytes(config, weights: dict[str, torch.Tensor], dtype: str, compress: str) -> int:
    """About how many bytes the package's weight.bin will hold (functions share their weights)."""
    tables, other = stored_parameters(config, weights)
    per_table, per_other = bytes_per_weight(dtype, compress)
    return int(tables * per_table + other * per_other)


def ios_oversize(
    config, weights: dict[str, torch.Tensor], options: CoreMLOptions, limit: int | None = None
) -> int | None:
    """The estimated weight bytes of one package when they exceed what an iOS app loads (`limit`, IOS_WEIGHT_LIMIT by
    default) and nothing allows it (allow_large, a macOS target); None when one package is fine."""
    limit = IOS_WEIGHT_LIMIT if limit is None else limit
    if options.allow_large or not options.target.lower().startswith("ios"):
        return None
    size = estimated_weight_bytes(config, weights, options.dtype, options.compress)
    return size if size > limit else None


def check_size(config, weights: dict[str, torch.Tensor], options: CoreMLOptions, limit: int | None = None) -> None:
    """Refuse an iOS package whose weights would exceed `limit` (IOS_WEIGHT_LIMIT by default) unless allow_large,
    naming the size and the least lossy compression that would fit."""
    limit = IOS_WEIGHT_LIMIT if limit is None else limit
    size = ios_oversize(config, weights, options, limit)
    if size is None:
        return
    scheme = options.dtype if options.compress == "none" else options.compress
    candidates = (
        _SMALLER_FIRST[_SMALLER_FIRST.index(options.compress) + 1 :]
        if options.compress in _SMALLER_FIRST
        else _SMALLER_FIRST
    )
    sizes = [(c, estimated_weight_bytes(config, weights, options.dtype, c)) for c in candidates]
    fits = [(c, n) for c, n in sizes if n <= limit]
    advice = (
        f"--compress {fits[0][0]} would make them about {fits[0][1] / 1e9:.2f} GB"
        if fits
        else "no compression makes them fit"
    )
    raise ConversionError(
        f"the weights come to about {size / 1e9:.2f} GB ({scheme}), above the ~{limit / 1e9:.0f} GB "
        f"an iOS app can load: {advice}, or give --out a folder for a chunked model of parts under 1 GB (or pass "
        "--allow-large to write it anyway)"
    )


def convert_to_coreml(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    options: CoreMLOptions,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert `checkpoint` into the package `out` (PATH.mlpackage); return `out`."""
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise ConversionError(f"{out}: a Core ML package path must end in .mlpackage")
    if out.exists() and not overwrite:
        raise ConversionError(f"{out}: already exists (pass --overwrite to replace it)")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if not isinstance(ckpt, Checkpoint):  # an MLX directory (MLXCheckpoint): its weights are MLX arrays
        raise ConversionError(
            f"{ckpt.directory}: an MLX directory written by 'ondevice convert --to mlx'; convert from the "
            "checkpoint it came from"
        )
    plan = plan_conversion(ckpt.config, options)
    check_size(ckpt.config, ckpt.weights, options)
    causal = ckpt.config.is_causal
    stages = ["calibrate"] * (options.calibration_text is not None)
    stages += ["export + convert prefill", "export + convert decode"] if plan.multifunction else ["export + convert"]
    stages += ["compress"] * (options.compress != "none") + ["write package", "metadata + tokenizer"]
    bar = tqdm(total=len(stages), desc="coreml", unit="stage", disable=not progress)
    try:
        with (
            atomic_output(out, overwrite=overwrite) as work,
            tempfile.TemporaryDirectory(dir=out.parent) as tmp,
            faster_conversion() as fast,
        ):
            if causal:
                functions = _convert_causal(ckpt, plan, bar, Path(tmp), fast)
            else:
                functions = {"main": _convert_encoder(ckpt, plan, bar)}
            if options.compress != "none":
                bar.set_postfix_str(f"compress {options.compress}")
                functions = compress_functions(functions, options.compress, plan.target)
                bar.update()
            bar.set_postfix_str("write package")
            save_package(functions, work, Path(tmp), plan.target, fast)
            bar.update()
            bar.set_postfix_str("metadata + tokenizer")
            write_package_extras(work, ckpt, plan, package_interface(work))
            bar.update()
    finally:
        bar.close()
    return out


def package_interface(package: Path) -> dict[str, dict[str, Any]]:
    """Each function's input, output and state names, as the written package describes them."""
    from coremltools.models.utils import load_spec

    description = load_spec(str(package)).description
    caches = set(CACHE_NAMES.values())
    functions = description.functions or [description]  # a one-function package describes `main` at the top
    return {
        getattr(function, "name", "") or "main": {
            "inputs": [f.name for f in function.input],
            "outputs": [f.name for f in function.output],
            "states": [f.name for f in function.state],
            # what a runtime allocates: each cache's shape, an input (io) or a state
            "cache_shapes": {f.name: list(f.type.multiArrayType.shape) for f in function.input if f.name in caches}
            | {f.name: list(f.type.stateType.arrayType.shape) for f in function.state if f.name in caches},
        }
        for function in functions
    }


def save_package(functions: dict, work: Path, tmp: Path, target, fast: bool = False) -> None:
    if list(functions) == ["main"]:
        functions["main"].save(str(work))
        return
    if fast:  # the programs merged in memory (convert/coreml_fast.py)
        save_functions(functions, work, target)
        return
    saved = {}
    for name, model in functions.items():
        saved[name] = tmp / f"{name}.mlpackage"
        model.save(str(saved[name]))
    merge_saved_functions(saved, work)


def merge_saved_functions(saved: dict[str, Path], work: Path) -> None:
    """One multifunction package at `work` from one-function packages saved on disk (name -> path), the first the
    default; identical weight constants of the functions are stored once (coremltools deduplicates by content)."""
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    for name, path in saved.items():
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = next(iter(saved))
    ct.utils.save_multifunction(desc, str(work))


def _precision(dtype: str):
    import coremltools as ct

    return ct.precision.FLOAT16 if dtype == "fp16" else ct.precision.FLOAT32


def output_float(dtype: str):
    return np.float16 if dtype == "fp16" else np.float32


def export_module(module: torch.nn.Module, args: tuple, dynamic_shapes=None):
    # no_grad: the same graph, traced without autograd's bookkeeping (~10% of the export's time)
    with torch.no_grad():
        try:
            exported = torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as exc:  # torch raises many types here; the message is what matters
            raise ConversionError(f"torch.export failed: {str(exc).splitlines()[0]}") from exc
        return exported.run_decompositions({})  # coremltools needs the ATen-level graph


def ct_convert(exported, inputs: list, outputs: list[str], plan: Plan, out_dtype, convert_to: str = "mlprogram"):
    """ct.convert's MLModel, or with convert_to="milinternal" its program before the backend (convert/coreml_fast.py
    finishes and writes it)."""
    import coremltools as ct

    from convert import coreml_torch_ops  # noqa: F401  (registers the gelu fix)

    try:
        return ct.convert(
            exported,
            inputs=inputs,
            outputs=[ct.TensorType(name=n, dtype=out_dtype) for n in outputs],
            convert_to=convert_to,
            minimum_deployment_target=plan.target,
            compute_precision=_precision(plan.options.dtype),
            compute_units=ct.ComputeUnit.CPU_AND_NE,
            skip_model_load=True,
        )
    except Exception as exc:
        raise ConversionError(f"coremltools could not convert the model: {str(exc).splitlines()[0]}") from exc


def convert_function(
    module: torch.nn.Module, example: tuple, inputs: list, outputs: list[str], plan: Plan, programs: bool
):
    """One fixed-shape function of a package, exported and converted: an MLModel, or with `programs` (the fast path,
    uncompressed) a finished program for `save_functions`."""
    converted = ct_convert(export_module(module, example), inputs, outputs, plan, output_float(plan.options.dtype),
                           "milinternal" if programs else "mlprogram")  # fmt: skip
    if programs:
        finish_program(converted, plan.options.dtype == "fp16")
    return converted


def _convert_causal(ckpt: Checkpoint, plan: Plan, bar, scratch: Path, fast: bool = False) -> dict:
    import coremltools as ct

    context = plan.context
    assert context is not None  # a causal LM's plan has its context
    model = build_ane_model(ckpt.config, ckpt.weights)
    if plan.options.calibration_text is not None:
        from convert.coreml_calibrate import calibrate_int4, calibration_windows, window_length

        bar.set_postfix_str("calibrate")
        windows = calibration_windows(
            plan.options.calibration_text, ckpt.directory, window_length(ckpt.config), vocab_size=ckpt.config.vocab_size
        )
        calibrate_int4(model, windows)  # the blocks' convs carry uint4 metadata that ct.convert honours
        bar.update()
    model.limit_positions(context)  # position tables (RoPE) hold the package's context only
    names = logits_names(LOGITS, len(model.lm_head.chunks))
    out_dtype = output_float(plan.options.dtype)
    position = ct.TensorType(POSITION, shape=(1,), dtype=np.int32)
    prefill = plan.seq_lens[0]
    shapes = cache_shapes(model, context, prefill)
    module: CausalLMWithState | CausalLMWithIOCache
    if plan.kv_cache == "state":
        module = CausalLMWithState(model, context, prefill)
    else:
        module = CausalLMWithIOCache(model, list(shapes))
        caches = [ct.TensorType(n, shape=shape, dtype=out_dtype) for n, shape in shapes.items()]
        names = [*names, *map(cache_output, shapes)]
        # Distinct tensors: torch.export treats one tensor passed twice as one aliased input.
        empty = [torch.zeros(shape) for shape in shapes.values()]

    def example(seq: int) -> tuple:
        ids, pos = torch.zeros(1, seq, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        return (ids, pos) if plan.kv_cache == "state" else (ids, pos, *empty)

    def extra_inputs() -> list:
        return [position] if plan.kv_cache == "state" else [position, *caches]

    if not plan.multifunction:  # iOS 16/17: one function, enumerated lengths {1, S}
        bar.set_postfix_str("export + convert")
        seq_dim = torch.export.Dim("seq", min=1, max=max(prefill, 2))
        dynamic = ({1: seq_dim}, None, (None,) * len(shapes))  # the caches: one varargs entry
        lengths = sorted({1, prefill})
        ids = ct.TensorType(
            INPUT_IDS, shape=ct.EnumeratedShapes([(1, n) for n in lengths], default=(1, prefill)), dtype=np.int32
        )
        result = {
            "main": ct_convert(
                export_module(module, example(prefill), dynamic), [ids, *extra_inputs()], names, plan, out_dtype
            )
        }
        bar.update()
        return result

    # Fast path, uncompressed: each function a finished program, all written once (convert/coreml_fast.py);
    # compression takes MLModels.
    programs = fast and plan.options.compress == "none"

    def function(seq: int):
        ids = ct.TensorType(INPUT_IDS, shape=(1, seq), dtype=np.int32)
        return convert_function(module, example(seq), [ids, *extra_inputs()], names, plan, programs)

    def decode_package(path: Path) -> None:  # in the forked process
        if programs:
            save_program(function(1), path, plan.target)
        else:
            save_and_discard(function(1), path)

    if plan.options.parallel and why_not_parallel(4 * sum(stored_parameters(ckpt.config, ckpt.weights))) is None:
        bar.set_postfix_str("export + convert prefill and decode, side by side")
        decode = ForkedConversion(decode_package, scratch / "decode.mlpackage")
        try:
            prefill_model = function(prefill)
            bar.update()
            decode_model = ct.models.MLModel(str(decode.result()), skip_model_load=True)
        except BaseException:
            decode.cancel()
            raise
        bar.update()
        return {"prefill": prefill_model, "decode": decode_model}
    functions = {}
    for name, seq in (("prefill", prefill), ("decode", 1)):
        bar.set_postfix_str(f"export + convert {name}")
        functions[name] = function(seq)
        bar.update()
    return functions


def _convert_encoder(ckpt: Checkpoint, plan: Plan, bar):
    import coremltools as ct

    with_types = getattr(ckpt.config, "type_vocab_size", 0) > 0
    names = [INPUT_IDS, ATTENTION_MASK] + [TOKEN_TYPE_IDS] * with_types
    longest = plan.seq_lens[-1]
    example = tuple(torch.ones(1, longest, dtype=torch.long) for _ in names)
    module = EncoderForExport(build_ane_model(ckpt.config, ckpt.weights), example)
    if len(plan.seq_lens) == 1:
        shape, dynamic = (1, longest), None
    else:
        shape = ct.EnumeratedShapes([(1, n) for n in plan.seq_lens], default=(1, longest))
        seq = torch.export.Dim("seq", min=2, max=longest)
        dynamic = tuple({1: seq} for _ in names)
    inputs = [ct.TensorType(n, shape=shape, dtype=np.int32) for n in names]
    bar.set_postfix_str("export + convert")
    out_dtype = output_float(plan.options.dtype)
    model = ct_convert(export_module(module, example, dynamic), inputs, module.output_names(), plan, out_dtype)
    bar.update()
    return model
