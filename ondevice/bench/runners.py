"""Loading each backend and the measurements every backend shares: prefill, decode and encode are
written once against the runtime interface (`ondevice.runtime`), so the reference, torch-ane, MLX and
Core ML run the very same code on the very same token ids."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.bench.measure import decode_tokens_per_s, seconds
from ondevice.runtime import Encoder

OURS = ("torch-ane", "mlx")
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
PROMPT_TOKENS = 16  # decode starts after a prompt of this length


def coreml_unavailable() -> str | None:
    """Why Core ML cannot run packages here, or None where it can (macOS with coremltools' native proxy)."""
    if sys.platform != "darwin":
        return "Core ML prediction needs macOS; coremltools on Linux cannot run packages"
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401
    except ImportError as exc:
        return f"coremltools has no Core ML runtime in this environment ({exc})"
    return None


def import_backend(backend: str) -> None:
    """Import what a backend's load needs, so the runtime baseline (RSS before loading) includes it."""
    import transformers  # noqa: F401

    import convert.checkpoint  # noqa: F401
    import ondevice.reference

    if backend == "mlx":
        import ondevice.backends.mlx
    elif backend == "torch-ane":
        import ondevice.backends.torch_ane
    elif backend == "coreml":
        import coremltools  # noqa: F401

        import ondevice.backends.coreml  # noqa: F401


def loader(
    backend: str, checkpoint: str, dtype: str, package: str | None = None, compute_units: str | None = None
) -> Callable[[], object]:
    """A function from files on disk to a ready model: reading the checkpoint is part of every load."""
    from convert.checkpoint import load_checkpoint

    if backend == "reference":
        from ondevice.reference import load_reference

        return lambda: load_reference(load_checkpoint(checkpoint))
    if backend == "coreml":
        from ondevice.backends.coreml import load_package

        if package is None:
            raise ValueError("a coreml job names its package")
        units = compute_units or "CPU_AND_NE"  # the default `device_of` reports
        return lambda: load_package(package, use_coreml=True, compute_units=units)
    from ondevice.backends import load_backend

    return lambda: load_backend(backend, load_checkpoint(checkpoint), dtype=dtype)


def device_of(backend: str, compute_units: str | None = None) -> str:
    if backend == "mlx":
        import mlx.core as mx

        return str(mx.default_device())
    if backend == "coreml":
        return compute_units or "CPU_AND_NE"
    return "cpu"


# Tensors of a checkpoint that are not parameters: GPT-2's causal-mask buffers of old checkpoints.
_NOT_PARAMETERS = re.compile(r"(^|\.)attn\.(masked_)?bias$")


def parameter_count(checkpoint_dir: str | Path) -> int:
    """Parameters stored in a checkpoint, read from the safetensors headers (shapes and dtypes, no
    tensor data); a pytorch_model.bin is memory-mapped, never read. Integer and boolean tensors
    (position ids, masks) and GPT-2's mask buffers are not parameters. A tied head is stored once, so
    it is counted once: what one decoded token reads."""
    from convert.locate import resolve_checkpoint

    directory = Path(resolve_checkpoint(checkpoint_dir))
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        total = 0
        for shard in shards:
            with safe_open(shard, framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    piece = f.get_slice(name)
                    if piece.get_dtype().startswith(("F", "BF")) and not _NOT_PARAMETERS.search(name):
                        total += int(np.prod(piece.get_shape(), dtype=np.int64))
        return total
    import torch

    total, seen = 0, set()
    for shard in sorted(directory.glob("pytorch_model*.bin")):
        state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        for name, tensor in state.items():
            storage = (shard, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if tensor.is_floating_point() and not _NOT_PARAMETERS.search(name) and storage not in seen:
                seen.add(storage)
                total += tensor.numel()
    return total


def weight_bytes(parameters: int, precision: str) -> int:
    """Parameters x bytes per parameter of the precision run: what one decoded token reads."""
    return int(parameters * BYTES_PER_PARAMETER[precision])


@dataclass(frozen=True)
class Case:
    """One timed measurement, runnable on any model of the family: `run(model)` returns a value in
    `unit` (seconds for latencies, tokens/s for decode)."""

    kind: str  # prefill, decode, encode
    seq_len: int
    batch: int
    run: Callable[[Any], float]  # a CausalLM or an Encoder (ondevice.runtime), as `kind` says


def causal_cases(vocab: int, seq_lens: list[int], decode_tokens: int, seed: int = 0) -> list[Case]:
    ids = np.random.default_rng(seed).integers(0, vocab, size=max([*seq_lens, PROMPT_TOKENS])).tolist()

    def prefill(n: int) -> Callable[[object], float]:
        def run(lm) -> float:
            lm.trim(0)
            return seconds(lambda: lm.prefill(ids[:n]))

        return run

    cases = [Case("prefill", n, 1, prefill(n)) for n in seq_lens]
    if decode_tokens > 0:
        prompt = ids[:PROMPT_TOKENS]
        cases.append(Case("decode", PROMPT_TOKENS, 1, lambda lm: decode_tokens_per_s(lm, prompt, decode_tokens)))
    return cases


def encoder_cases(vocab: int, seq_lens: list[int], batch: int, seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)

    def encode(n: int) -> Callable[[Encoder], float]:
        ids = rng.integers(1, vocab, size=(batch, n))
        mask = np.ones_like(ids)
        return lambda enc: seconds(lambda: enc.encode(ids, mask))

    return [Case("encode", n, batch, encode(n)) for n in seq_lens]


def clip_seq_lens(seq_lens: list[int], max_positions: int) -> list[int]:
    """Sequence lengths the model can take: longer ones are clipped to its positions (deduplicated)."""
    return sorted({min(n, max_positions) for n in seq_lens})


def package_path(cache_dir: Path, name: str, compression: str, checkpoint: Path, limit: int | None = None) -> Path:
    """Where the benchmark's Core ML conversion of a model goes: `NAME-COMPRESSION.mlpackage`, or for a causal LM
    whose weights are above what one iOS package holds (`limit`, IOS_WEIGHT_LIMIT by default) a chunked model, the
    folder `NAME-COMPRESSION`, as `ondevice convert` would need."""
    from canonical.errors import ConversionError
    from convert.checkpoint import Checkpoint, load_checkpoint
    from convert.coreml import CoreMLOptions, check_size

    stem = Path(cache_dir) / "coreml" / f"{name}-{compression}"
    ckpt = load_checkpoint(checkpoint)  # lazy: the headers give the sizes
    if not isinstance(ckpt, Checkpoint) or not ckpt.config.is_causal:  # an MLX directory: conversion refuses it
        return stem.with_name(stem.name + ".mlpackage")
    try:
        check_size(ckpt.config, ckpt.weights, CoreMLOptions(compress=compression), limit)
    except ConversionError:
        return stem
    return stem.with_name(stem.name + ".mlpackage")


def convert_package(
    checkpoint: str, out: Path, compression: str, seq_lens: list[int], is_causal: bool, max_positions: int
) -> Path:
    """`ondevice convert --to coreml` as a library call: fp16, the given compression; GPT-2 with a
    context long enough for the longest prefill and a 64-token prefill chunk, encoders with every
    benchmarked length enumerated. An `out` without `.mlpackage` gets a chunked model (`package_path`)."""
    from convert.coreml import CoreMLOptions, convert_to_coreml

    if is_causal:
        context = min(max_positions, max(max(seq_lens), 128))
        options = CoreMLOptions(dtype="fp16", seq_lens=(min(64, context),), context=context, compress=compression)
    else:
        options = CoreMLOptions(dtype="fp16", seq_lens=tuple(seq_lens), compress=compression)
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # the benchmark's cache folder, made on first use
    if Path(out).suffix != ".mlpackage":
        from convert.coreml_chunks import convert_chunked

        return convert_chunked(checkpoint, out, options, overwrite=True, progress=False)
    return convert_to_coreml(checkpoint, out, options, overwrite=True, progress=False)
