"""`ondevice verify`: a backend, a Core ML package or an MLX export against the transformers CPU reference."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from canonical.errors import OndeviceError
from ondevice.commands.common import EXIT_FAILED_CHECK, Precision, console, one_line_errors


@one_line_errors
def verify(
    checkpoint: Annotated[str, typer.Argument(
        help="Checkpoint directory, bundled name, or cached model id; or a PATH.mlpackage (with --reference).")],
    backend: Annotated[str, typer.Option(help="Backend to check against the transformers CPU reference.")] = (
        "torch-ane"
    ),
    seq_len: Annotated[int | None, typer.Option(help="Tokens per input (default: 64, capped by positions).")] = None,
    dtype: Annotated[Precision, typer.Option(help="Precision of the backend under test.")] = Precision.fp32,
    seed: Annotated[int, typer.Option(help="Seed of the random token ids.")] = 0,
    reference: Annotated[str | None, typer.Option(
        help="For a .mlpackage or an MLX directory: the checkpoint it was converted from.")] = None,
) -> None:
    """Compare a backend (or a Core ML package) with the transformers CPU reference on the same random token ids."""
    from ondevice.verify import verify as run_verify
    from ondevice.verify import verify_package

    if checkpoint.rstrip("/").endswith(".mlpackage"):
        if reference is None:
            raise OndeviceError(f"{checkpoint}: verifying a package needs --reference CHECKPOINT")
        report = verify_package(checkpoint, reference, seq_len=seq_len, seed=seed)
    elif reference is not None:
        from ondevice.verify import verify_mlx_export

        report = verify_mlx_export(checkpoint, reference, seq_len=seq_len, seed=seed)
    else:
        report = run_verify(checkpoint, backend=backend, seq_len=seq_len, dtype=dtype.value, seed=seed)
    tol = report.tolerance
    table = Table(
        title=f"{report.model_type} · {report.backend} {report.dtype} vs transformers CPU fp32 · "
        f"seq_len {report.seq_len}",
        caption=f"bounds ({report.dtype}): max |err| ≤ {tol.rel_max_abs:g} × scale, cosine ≥ {tol.cosine:g}",
    )
    table.add_column("output", no_wrap=True)
    for column in ("max |err|", "scale", "rel. error", "cosine", "result"):
        table.add_column(column, justify="right", no_wrap=True)
    for c in report.comparisons:
        verdict = "[green]ok[/green]" if c.within(tol) else "[red]FAIL[/red]"
        table.add_row(c.name, f"{c.max_abs:.3e}", f"{c.scale:.3g}", f"{c.rel_max_abs:.2e}", f"{c.cosine:.8f}", verdict)
    console.print(f"checkpoint: {report.checkpoint}", highlight=False, soft_wrap=True)
    console.print(table)
    if report.greedy_match is not None:
        steps = len(report.greedy_reference)
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        verdict = "[green]match[/green]" if report.greedy_match else "[red]DIFFER[/red]"
        if not report.greedy_required:
            verdict += " (reported: exact agreement is required of lossless formats only)"
        console.print(f"greedy tokens: {same}/{steps} {verdict}", soft_wrap=True)
        if not report.greedy_match:
            console.print(f"  ours:      {report.greedy_ours}\n  reference: {report.greedy_reference}")
    console.print("[green]PASS[/green]" if report.passed else "[red]FAIL[/red]")
    if not report.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)
