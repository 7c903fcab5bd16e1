"""`ondevice bench`: every backend and peer on the same models and inputs."""

from __future__ import annotations

from typing import Annotated

import typer

from ondevice.commands.common import (
    EXIT_FAILED_CHECK,
    at_least,
    console,
    error_line,
    one_line_errors,
    output_path,
)


@one_line_errors
def bench(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="keyboard-gpt2, all-MiniLM-L6-v2, gpt2-124m-random, smollm2-135m-random, qwen3-0.6b-random, "
            "llama3.2-1b-random, qwen3-1.7b-random, llama3.2-3b-random (made locally), a checkpoint directory or an "
            "MLX directory (--backends mlx); repeatable. Core ML gets a chunked model where one package would exceed "
            "~1 GB.",
        ),
    ] = None,
    backends: Annotated[
        list[str] | None,
        typer.Option(
            "--backends",
            help="reference, torch-ane, mlx, coreml; peers mlx_lm, ane_transformers (repeat, or comma-separate).",
        ),
    ] = None,
    seq_lens: Annotated[
        list[str] | None,
        typer.Option(
            "--seq-lens", help="Prefill/encode lengths, e.g. 16,64 (default 16..512; clipped to the model's positions)."
        ),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small models, lengths 16 and 64, 3 repeats: a few minutes.")] = False,
    out: Annotated[
        str | None, typer.Option(help="Output directory (default: bench-results in the working directory).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads of torch, MLX's CPU backend and BLAS (1 or more).")
    ] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per measurement (median reported).")] = None,
    batch: Annotated[int, typer.Option(help="Encoder batch size.")] = 1,
    keystrokes: Annotated[
        int | None,
        typer.Option(
            help="Keys of held-out text replayed per predictive-text backend (default 2,000; --quick 150; 0: none)."
        ),
    ] = None,
) -> None:
    """Benchmark every backend and peer on the same models and inputs: table, bench.json, bench.md, bench.png.
    Exits 1 when every measurement of a model failed."""
    import json

    from canonical.errors import InputError
    from ondevice.bench.run import RESULTS, BenchOptions, check_threads, failed_models, run_bench

    def split(values: list[str] | None) -> list[str] | None:
        return [part.strip() for v in values for part in v.split(",") if part.strip()] if values else None

    try:
        lengths = [int(n) for n in split(seq_lens) or ()] if seq_lens else None
    except ValueError as exc:
        raise InputError(f"--seq-lens takes whole numbers: {exc}") from None
    if seq_lens and not lengths:
        raise InputError("--seq-lens: no length given")
    for n in lengths or ():
        at_least("--seq-lens", n, 1)
    at_least("--batch", batch, 1)
    at_least("--repeats", repeats, 1)
    at_least("--keystrokes", keystrokes, 0)
    check_threads(threads)
    out_dir = RESULTS if out is None else output_path("--out", out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; --out takes a directory (bench.json, bench.md and bench.png go in it)")
    wanted = _backends_for_mlx_directories(model, split(backends))
    run_bench(
        BenchOptions(
            models=model,
            backends=wanted,
            seq_lens=lengths,
            quick=quick,
            out=out_dir,
            threads=threads,
            repeats=repeats,
            batch=batch,
            keystrokes=keystrokes,
        ),
        console,
    )
    failed = failed_models(json.loads((out_dir / "bench.json").read_text())["records"])
    if failed:
        error_line(
            "; ".join(f"every measurement of {name} failed (first: {reason})" for name, reason in failed.items())
        )
        raise typer.Exit(EXIT_FAILED_CHECK)


def _backends_for_mlx_directories(models: list[str] | None, backends: list[str] | None) -> list[str] | None:
    """An MLX directory runs on the mlx backend only: alone, it gets `mlx` by default; with anything else
    asked of it, it is refused in one line."""
    from canonical.errors import InputError
    from convert.checkpoint import is_mlx_directory

    exported = [m for m in models or () if is_mlx_directory(m)]
    if not exported or models is None:
        return backends
    others = [b for b in backends or () if b != "mlx"]
    if others or (backends is None and len(exported) < len(models)):
        raise InputError(
            f"{exported[0]}: an MLX directory written by 'ondevice convert --to mlx' runs on the mlx "
            f"backend only (pass --backends mlx"
            + (", and its other models separately)" if len(exported) < len(models) else ")")
        )
    return ["mlx"]
