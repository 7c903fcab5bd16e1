"""`ondevice convert`: a checkpoint into a Core ML package or an MLX directory."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ondevice.commands.common import console, one_line_errors


class Target(StrEnum):
    coreml = "coreml"
    mlx = "mlx"


@one_line_errors
def convert(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, bundled name, or cached model id.")],
    to: Annotated[Target, typer.Option("--to", help="coreml: an .mlpackage for the Neural Engine; mlx: MLX weights.")],
    out: Annotated[Path, typer.Option("--out", help="Output path (PATH.mlpackage for coreml, a directory for mlx).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    dtype: Annotated[
        str | None, typer.Option(help="Weights/compute precision: fp16 (default), fp32, bf16 (mlx).")
    ] = None,
    seq_len: Annotated[
        list[int] | None, typer.Option("--seq-len", help="Core ML: Sequence length(s); repeat to enumerate (encoders).")
    ] = None,
    context: Annotated[int | None, typer.Option(help="Core ML, GPT-2: KV cache capacity in tokens.")] = None,
    target: Annotated[
        str, typer.Option(help="Core ML: Minimum deployment target, e.g. iOS18, iOS17, macOS15.")
    ] = "iOS18",
    kv_cache: Annotated[
        str, typer.Option(help="Core ML, GPT-2: state (iOS 18+) or io (cache as inputs/outputs).")
    ] = "state",
    compress: Annotated[str, typer.Option(help="Core ML: none, int8, int4, palettize4, palettize6.")] = "none",
    calibration_text: Annotated[
        Path | None,
        typer.Option(help="Core ML int4, GPT-2: GPTQ-calibrate the 4-bit weights on this text (one paragraph a "
                     "line, .txt or .txt.gz): the training text, never text you evaluate on."),
    ] = None,
    quantize: Annotated[int | None, typer.Option(help="MLX: Affine weight quantization bits: 4 or 8.")] = None,
    group_size: Annotated[int, typer.Option(help="MLX: Quantization group size.")] = 64,
) -> None:
    """Convert a checkpoint into a Core ML package or MLX weights."""
    if to is Target.coreml:
        from convert.coreml import CoreMLOptions, convert_to_coreml

        options = CoreMLOptions(
            dtype=dtype or "fp16",
            seq_lens=tuple(seq_len or ()),
            context=context,
            target=target,
            kv_cache=kv_cache,
            compress=compress,
            calibration_text=calibration_text,
        )
        written = convert_to_coreml(checkpoint, out, options, overwrite=overwrite)
    else:
        from convert.mlx_export import export_mlx

        written = export_mlx(
            checkpoint, out, dtype=dtype or "fp16", quantize=quantize, group_size=group_size, overwrite=overwrite
        )
    console.print(f"wrote {written}", highlight=False, soft_wrap=True)
