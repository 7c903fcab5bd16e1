"""`ondevice convert`: a checkpoint into a Core ML package or an MLX directory."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ondevice.commands.common import (
    at_least,
    byte_size,
    console,
    errors,
    not_applicable,
    one_line_errors,
    one_of,
    output_path,
)


class OutputFormat(StrEnum):
    coreml = "coreml"
    mlx = "mlx"


MLX_BITS = (4, 8)
MLX_GROUP_SIZES = (32, 64, 128)


@one_line_errors
def convert(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, bundled name, or cached model id.")],
    to: Annotated[
        OutputFormat, typer.Option("--to", help="coreml: an .mlpackage for the Neural Engine; mlx: MLX weights.")
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Output path: PATH.mlpackage (coreml, one package), a folder (coreml: a chunked model, causal LMs; "
            "mlx: its directory).",
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier output of this command (or an empty folder); never anything else.")
    ] = False,
    dtype: Annotated[
        str | None, typer.Option(help="Weights/compute precision: fp16 (default), fp32, bf16 (mlx).")
    ] = None,
    seq_len: Annotated[
        list[int] | None, typer.Option("--seq-len", help="Core ML: Sequence length(s); repeat to enumerate (encoders).")
    ] = None,
    context: Annotated[
        int | None,
        typer.Option(help="Core ML, causal LMs: KV cache capacity in tokens (default: 512, capped by the positions)."),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Core ML: Minimum deployment target, e.g. iOS18 (default), iOS17, macOS15.")
    ] = None,
    kv_cache: Annotated[
        str | None, typer.Option(help="Core ML, causal LMs: state (default; iOS 18+) or io (cache as inputs/outputs).")
    ] = None,
    compress: Annotated[
        str | None, typer.Option(help="Core ML: none (default), int8, int4, palettize4, palettize6.")
    ] = None,
    calibration_text: Annotated[
        Path | None,
        typer.Option(
            help="Core ML int4, causal LMs: GPTQ-calibrate the 4-bit weights on this text (one paragraph "
            "a line, .txt or .txt.gz): the training text, never text you evaluate on."
        ),
    ] = None,
    quantize: Annotated[int | None, typer.Option(help="MLX: Affine weight quantization bits: 4 or 8.")] = None,
    group_size: Annotated[int | None, typer.Option(help="MLX: Quantization group size: 32, 64 (default), 128.")] = None,
    allow_large: Annotated[
        bool,
        typer.Option(
            help="Core ML, iOS targets: write a package whose weights exceed what an iOS app can load (~1 GB)."
        ),
    ] = False,
    chunks: Annotated[
        int | None,
        typer.Option(
            help="Core ML, causal LMs: split the layers into this many parts, each a package in the --out folder "
            "(default for a folder: as few as keep each part under --chunk-size)."
        ),
    ] = None,
    chunk_size: Annotated[
        str | None,
        typer.Option(
            help="Core ML, causal LMs: the most weight bytes per part, e.g. 950MB (default for an iOS target: 950MB). "
            "Without --chunks, parts also stay under 500M parameters, which bounds the conversion's memory."
        ),
    ] = None,
    one_process: Annotated[
        bool,
        typer.Option(
            help="Core ML, causal LMs (iOS 18+): convert prefill and decode one after the other in this process "
            "(by default side by side in two where that is safe and pays: Linux, two cores, memory for both); "
            "the package is the same."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Show the converters' own warnings and progress bars.")] = False,
) -> None:
    """Convert a checkpoint into a Core ML package, a chunked Core ML model (a folder of packages) or MLX weights."""
    from canonical.errors import InputError
    from convert.atomic import atomic_output
    from convert.checkpoint import is_mlx_directory, mlx_source, read_model_config
    from convert.locate import resolve_checkpoint
    from ondevice.quiet import CONVERTER_BARS, captured

    _check_options(to, dtype, seq_len, context, target, kv_cache, compress, calibration_text, quantize, group_size)
    if to is OutputFormat.mlx:
        not_applicable({"--allow-large": allow_large, "--one-process": one_process}, "to --to coreml only")
    size_limit = byte_size("--chunk-size", chunk_size)
    at_least("--chunks", chunks, 1)
    if to is OutputFormat.mlx:
        not_applicable({"--chunks": chunks, "--chunk-size": chunk_size}, "to --to coreml only")
    not_applicable({"--chunk-size": chunk_size} if chunks else {}, "without --chunks (which sets the parts' count)")
    out_path = output_path("--out", out)
    chunked = to is OutputFormat.coreml and out_path.suffix != ".mlpackage"
    if to is OutputFormat.coreml and not chunked and ((chunks or 1) > 1 or size_limit):
        raise InputError(
            f"{out_path}: a chunked model is a folder of packages; give --out a folder name without .mlpackage"
        )
    if to is OutputFormat.mlx and out_path.suffix == ".mlpackage":
        raise InputError(
            f"{out_path}: an MLX directory named like a Core ML package would be taken for one (by inspect, "
            "generate, Xcode); choose an --out without .mlpackage, or --to coreml"
        )
    source = resolve_checkpoint(checkpoint)
    if is_mlx_directory(source):
        origin = mlx_source(source)
        raise InputError(
            f"{source}: an MLX directory written by 'ondevice convert --to mlx' (it runs on "
            f"--backend mlx); convert from the checkpoint it came from" + (f" ({origin})" if origin else "")
        )
    model_type, config = read_model_config(source)
    if chunked:
        not_applicable(
            {"--one-process": one_process}, "to one package (a chunked model's parts convert in one process)"
        )
    if chunked and not config.is_causal:
        raise InputError(
            f"{out_path}: a Core ML package path must end in .mlpackage (a folder holds a chunked causal LM; "
            f"{model_type} is an encoder)"
        )
    if not config.is_causal:
        not_applicable(
            {"--context": context, "--kv-cache": kv_cache},
            f"to causal LMs; {model_type} is an encoder (its input lengths: --seq-len)",
        )
    start = time.perf_counter()
    bars = {"coreml": errors.is_terminal, "mlx": console.is_terminal}  # asked before stderr is captured
    with captured(verbose, own_bars=CONVERTER_BARS) as noise:
        if to is OutputFormat.coreml:
            from convert.coreml import CoreMLOptions, convert_to_coreml, plan_conversion

            options = CoreMLOptions(
                dtype=dtype or "fp16",
                seq_lens=tuple(seq_len or ()),
                context=context,
                target=target or "iOS18",
                kv_cache=kv_cache or "state",
                compress=compress or "none",
                calibration_text=calibration_text,
                allow_large=allow_large,
                parallel=not one_process,
            )
            plan = plan_conversion(config, options)  # refuses what the target cannot hold before anything is written
            if not chunked and chunks is None and config.is_causal:
                out_path, chunked = _chunked_when_too_large(source, out_path, options, noise.say)
            what = (
                f"{'chunked Core ML model' if chunked else 'Core ML package'} ({options.dtype}, target {options.target}"
                + (f", {options.compress}" if options.compress != "none" else "")
                + (f", context {plan.context}, {plan.kv_cache} cache" if plan.context else "")
                + f", seq_lens {','.join(map(str, plan.seq_lens))})"
            )
        else:
            what = f"MLX directory ({dtype or 'fp16'}" + (f", q{quantize} group {group_size or 64}" if quantize else "")
            what += ")"
        with atomic_output(
            out_path, overwrite=overwrite, protect=[source], record={"kind": to.value, "source": str(source.resolve())}
        ) as work:
            # `work` lies in a staging folder beside --out: everything the converter writes, its own temporary
            # folders included, stays in there until the output is complete, and is removed if it never is.
            if chunked:
                from convert.coreml_chunks import convert_chunked

                convert_chunked(source, work, options, chunks, size_limit, progress=bars["coreml"], say=noise.say)
            elif to is OutputFormat.coreml:
                convert_to_coreml(source, work, options, progress=bars["coreml"])
            else:
                from convert.mlx_export import export_mlx

                export_mlx(
                    source,
                    work,
                    dtype=dtype or "fp16",
                    quantize=quantize,
                    group_size=group_size or 64,
                    progress=bars["mlx"],
                )
    size = (
        sum(p.stat().st_size for p in out_path.rglob("*") if p.is_file())
        if out_path.is_dir()
        else out_path.stat().st_size
    )
    hidden = len(noise.lines)
    console.print(
        f"wrote {out_path}: {what}, {size / 2**20:.1f} MiB, in {time.perf_counter() - start:.1f} s"
        + (f" ({hidden} lines of converter output hidden: --verbose shows them)" if hidden else ""),
        highlight=False,
        soft_wrap=True,
    )


def _chunked_when_too_large(source: Path, out_path: Path, options, say) -> tuple[Path, bool]:
    """An iOS package above what an app loads becomes a chunked model in the folder of the same name, said in one
    line; `--chunks 1 --allow-large` keeps one file. Returns the output path and whether it is chunked."""
    from convert.checkpoint import Checkpoint, load_checkpoint
    from convert.coreml import IOS_WEIGHT_LIMIT, ios_oversize

    ckpt = load_checkpoint(source)  # lazy: the headers give the sizes
    size = ios_oversize(ckpt.config, ckpt.weights, options) if isinstance(ckpt, Checkpoint) else None
    if size is None:
        return out_path, False
    folder = out_path.with_suffix("")
    say(
        f"{out_path.name}: the weights come to about {size / 1e9:.2f} GB, above the ~{IOS_WEIGHT_LIMIT / 1e9:.0f} GB "
        f"one iOS package holds: writing a chunked model to {folder} instead (--chunks 1 --allow-large keeps one file)"
    )
    return folder, True


def _check_options(
    to: OutputFormat, dtype, seq_len, context, target, kv_cache, compress, calibration_text, quantize, group_size
) -> None:
    """Option values and options that do not apply to the target, before anything is read or written."""
    if to is OutputFormat.mlx:
        not_applicable({"--compress": compress}, "to --to coreml only (for MLX: --quantize 4 or 8)")
        not_applicable(
            {
                "--seq-len": seq_len,
                "--context": context,
                "--target": target,
                "--kv-cache": kv_cache,
                "--calibration-text": calibration_text,
            },
            "to --to coreml only (an MLX directory has no fixed lengths, deployment target or cache "
            "layout; for MLX: --dtype, --quantize, --group-size)",
        )
        one_of("--dtype", dtype, ("fp32", "fp16", "bf16"))
        one_of("--quantize", quantize, MLX_BITS)
        one_of("--group-size", group_size, MLX_GROUP_SIZES)
        if group_size is not None and quantize is None:
            not_applicable({"--group-size": group_size}, "with --quantize 4 or 8 only")
    else:
        not_applicable(
            {"--quantize": quantize}, "to --to mlx only (for Core ML: --compress int8, int4, palettize4 or palettize6)"
        )
        not_applicable({"--group-size": group_size}, "to --to mlx only (Core ML int4 uses blocks of 32)")
        one_of("--dtype", dtype, ("fp16", "fp32"))
        for n in seq_len or ():
            at_least("--seq-len", n, 1)
        at_least("--context", context, 2)
