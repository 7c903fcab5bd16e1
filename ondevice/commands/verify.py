"""`ondevice verify`: a backend, a Core ML package or an MLX export against the transformers CPU reference."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from canonical.errors import InputError
from ondevice.commands.common import EXIT_FAILED_CHECK, Precision, at_least, console, not_applicable, one_line_errors


@one_line_errors
def verify(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="Checkpoint directory, bundled name, or cached model id; a PATH.mlpackage (with --reference); or an "
            "MLX directory (against the checkpoint it was exported from, or --reference)."
        ),
    ],
    backend: Annotated[
        str | None,
        typer.Option(help="Backend to check against the transformers CPU reference: torch-ane (default), mlx."),
    ] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per input (default: 64, capped by positions).")] = None,
    dtype: Annotated[
        Precision | None, typer.Option(help="Precision of the backend under test (default: fp32).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random token ids (0 or more).")] = 0,
    reference: Annotated[
        str | None, typer.Option(help="For a .mlpackage or an MLX directory: the checkpoint it was converted from.")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Compare a backend (or a Core ML package) with the transformers CPU reference on the same random token ids."""
    from convert.checkpoint import is_mlx_directory
    from ondevice.quiet import captured
    from ondevice.verify import check_seed

    check_seed(seed)
    at_least("--seq-len", seq_len, 1)
    from coreml_runtime.chunked import is_coreml_model

    is_package = is_coreml_model(checkpoint)
    is_mlx = not is_package and is_mlx_directory(checkpoint)
    if is_package:
        not_applicable(
            {"--backend": backend, "--dtype": dtype},
            "to a checkpoint; a package runs on Core ML in the precision it was converted to",
        )
        if reference is None:
            raise InputError(f"{checkpoint}: verifying a package needs --reference CHECKPOINT")
    elif is_mlx:
        if backend not in (None, "mlx"):
            raise InputError(
                f"{checkpoint}: an MLX directory written by 'ondevice convert --to mlx' runs on the mlx "
                f"backend, not {backend}"
            )
        not_applicable(
            {"--dtype": dtype}, "to a checkpoint; an MLX directory runs in its exported dtype and quantization"
        )
    else:
        not_applicable(
            {"--reference": reference}, "to a .mlpackage or an MLX directory (the checkpoint it was converted from)"
        )
    with captured(verbose):
        if is_package:
            from ondevice.verify import verify_package

            assert reference is not None  # a package without --reference was refused above
            report = verify_package(checkpoint, reference, seq_len=seq_len, seed=seed)
        elif is_mlx:
            from ondevice.verify import verify_mlx_export

            report = verify_mlx_export(checkpoint, reference, seq_len=seq_len, seed=seed)
        else:
            from ondevice.verify import verify as run_verify

            report = run_verify(
                checkpoint,
                backend=backend or "torch-ane",
                seq_len=seq_len,
                dtype=(dtype or Precision.fp32).value,
                seed=seed,
            )
    _print_report(report)
    if not report.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)


def _print_report(report) -> None:
    tol = report.tolerance
    table = Table(
        title=escape(
            f"{report.model_type} · {report.backend} {report.dtype} vs transformers CPU fp32 · seq_len {report.seq_len}"
        ),
        caption=f"bounds ({report.dtype}): max |err| ≤ {tol.rel_max_abs:g} × scale, cosine ≥ {tol.cosine:g}",
    )
    table.add_column("output", no_wrap=True)
    for column in ("max |err|", "scale", "rel. error", "cosine", "result"):
        table.add_column(column, justify="right", no_wrap=True)
    for c in report.comparisons:
        bad = c.name in report.nonfinite or c.name in report.uninformative
        verdict = "[green]ok[/green]" if c.within(tol) and not bad else "[red]FAIL[/red]"
        table.add_row(c.name, f"{c.max_abs:.3e}", f"{c.scale:.3g}", f"{c.rel_max_abs:.2e}", f"{c.cosine:.8f}", verdict)
    console.print(f"checkpoint: {report.checkpoint}", highlight=False, soft_wrap=True, markup=False)
    console.print(table)
    if report.nonfinite:
        counts = ", ".join(f"{name} {n}" for name, n in report.nonfinite.items())
        console.print(f"[red]non-finite values (NaN or inf) in our outputs:[/red] {counts}", highlight=False)
        if any(c.name == "logits" for c in report.comparisons):
            console.print("greedy tokens: not compared (non-finite logits agree with nothing)", highlight=False)
    for name, why in report.uninformative.items():
        console.print(
            f"[red]the reference's {escape(name)} {escape(why)}:[/red] there is nothing to agree with, "
            "so no comparison of them can pass (the checkpoint's weights or config compute nothing)",
            highlight=False,
            soft_wrap=True,
        )
    if report.greedy_match is not None:
        steps = len(report.greedy_reference)
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        verdict = "[green]match[/green]" if report.greedy_match else "[red]DIFFER[/red]"
        if not report.greedy_required:
            verdict += " (reported: exact agreement is required of lossless formats only)"
        console.print(f"greedy tokens: {same}/{steps} {verdict}", soft_wrap=True)
        if not report.greedy_match:
            console.print(
                f"  ours:      {report.greedy_ours}\n  reference: {report.greedy_reference}",
                markup=False,
                highlight=False,
            )
    console.print("[green]PASS[/green]" if report.passed else "[red]FAIL[/red]")
