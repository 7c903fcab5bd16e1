"""`ondevice bench`: every backend and peer on the same models and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ondevice.commands.common import console, one_line_errors


@one_line_errors
def bench(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="keyboard-gpt2, all-MiniLM-L6-v2, gpt2-124m-random (made locally) or a checkpoint "
        "directory; repeatable.")] = None,
    backends: Annotated[list[str] | None, typer.Option(
        "--backends", help="reference, torch-ane, mlx, coreml; peers mlx_lm, ane_transformers (repeat, or "
        "comma-separate).")] = None,
    seq_lens: Annotated[list[str] | None, typer.Option(
        "--seq-lens", help="Prefill/encode lengths, e.g. 16,64 (default 16..512; clipped to the model's positions).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small models, lengths 16 and 64, 3 repeats: a few minutes.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: benchmarks/results).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads of torch, MLX's CPU backend and BLAS.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per measurement (median reported).")] = None,
    batch: Annotated[int, typer.Option(help="Encoder batch size.")] = 1,
) -> None:
    """Benchmark every backend and peer on the same models and inputs: table, bench.json, bench.md, bench.png."""
    from canonical.errors import InputError
    from ondevice.bench.run import RESULTS, BenchOptions, run_bench

    def split(values: list[str] | None) -> list[str] | None:
        return [part.strip() for v in values for part in v.split(",") if part.strip()] if values else None

    try:
        lengths = [int(n) for n in split(seq_lens)] if seq_lens else None
    except ValueError as exc:
        raise InputError(f"--seq-lens takes whole numbers: {exc}") from None
    if (lengths is not None and min(lengths) < 1) or batch < 1 or (repeats is not None and repeats < 1):
        raise InputError("--seq-lens, --batch and --repeats must be positive")
    run_bench(BenchOptions(models=model, backends=split(backends), seq_lens=lengths, quick=quick, out=out or RESULTS,
                           threads=threads, repeats=repeats, batch=batch), console)
