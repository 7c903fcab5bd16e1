"""`ondevice inspect`: what a Core ML package holds, and how it fares against the ANE rules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ondevice.commands.common import console, one_line_errors


@one_line_errors
def inspect(
    package: Annotated[Path, typer.Argument(help="A Core ML package (PATH.mlpackage) or a chunked model's folder.")],
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools).")] = False,
) -> None:
    """Inputs, outputs, states, functions, op histogram, weight bytes and ANE rule violations of a package (of each
    part of a chunked model). The weights are checked against the sha256 recorded at conversion first: an altered
    package (or part) is refused."""
    from ondevice.quiet import captured

    with captured(verbose):
        from coreml_runtime.ane_rules import compute_plan, inspect_package
        from coreml_runtime.chunked import is_chunked_model, read_chunked_model
        from coreml_runtime.integrity import check_package_weights

        digest = check_package_weights(package)
        chunked = read_chunked_model(package, check_weights=False) if is_chunked_model(package) else None
        paths = [part.path for part in chunked.parts] if chunked else [package]
        reports = [inspect_package(path) for path in paths]
        plans = [compute_plan(path) for path in paths]
    meta = chunked.metadata if chunked else reports[0].metadata
    console.print(
        f"{package}: {meta['architecture']} · {meta['precision']} · compression {meta['compression']} · "
        f"kv cache {meta['kv_cache']} · target {meta['deployment_target']} · seq_lens {meta['seq_lens']}"
        + (f" · context {meta['context']}" if meta.get("context") else "")
        + (f" · chunked: {len(paths)} parts" if chunked else ""),
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    if chunked:
        total = sum(part["weight_bytes"] for part in chunked.manifest["parts"])
        for part, report in zip(chunked.parts, reports, strict=True):
            size = sum(report.weight_bytes.values())
            what = (
                "token table + head" if part.role == "embed_head" else f"layers {part.layers[0]}..{part.layers[1] - 1}"
            )
            console.print(
                f"[bold]part {escape(part.path.name)}[/bold]: {what}, {size / 2**20:.2f} MiB", highlight=False
            )
            _show(report, indent="  ")
        console.print(
            f"weights: {total / 2**20:.2f} MiB in {len(paths)} parts · every part's sha256 as recorded "
            f"(manifest {digest[:16] if digest else ''}…)",
            highlight=False,
        )
    else:
        _show(reports[0])
        weights = ", ".join(f"{dtype} {n / 2**20:.2f} MiB" for dtype, n in sorted(reports[0].weight_bytes.items()))
        console.print(
            f"weights: {weights or 'none'}"
            + (f" · sha256 {digest[:16]}… as recorded" if digest else " · no sha256 recorded (not checked)"),
            highlight=False,
        )
    violations = [v for report in reports for v in report.violations]
    if violations:
        from collections import Counter

        console.print(f"[red]ANE rule violations: {len(violations)}[/red]")
        for (fn_name, rule), count in Counter((v.function, v.rule) for v in violations).items():
            first = next(v for v in violations if (v.function, v.rule) == (fn_name, rule))
            console.print(
                f"  [{fn_name}] {rule}: {count} tensor(s), e.g. {first.op} ({first.op_type}) {first.detail}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    else:
        console.print("[green]ANE rule violations: none[/green]")
    plan: str | list[tuple[str, str, str]] = next((p for p in plans if isinstance(p, str)), None) or [
        entry for p in plans if not isinstance(p, str) for entry in p
    ]
    if isinstance(plan, str):
        console.print(plan, highlight=False, soft_wrap=True, markup=False)
    else:
        from collections import Counter

        devices = Counter(device for _, _, device in plan)
        ane = sum(n for d, n in devices.items() if "NeuralEngine" in d)
        share = 100 * ane / max(len(plan), 1)
        console.print(
            f"compute plan: {ane}/{len(plan)} ops prefer the Neural Engine ({share:.0f}%); "
            + ", ".join(f"{d} {n}" for d, n in devices.most_common()),
            highlight=False,
            soft_wrap=True,
        )


def _show(report, indent: str = "") -> None:
    """A package's functions: inputs, states, outputs and op counts."""
    for name, fn in report.functions.items():
        console.print(f"{indent}function [bold]{escape(name)}[/bold]", highlight=False)
        for label, features in (("input", fn.inputs), ("state", fn.states), ("output", fn.outputs)):
            for feature in features:
                console.print(f"{indent}  {label:6} {feature}", highlight=False, markup=False)
        ops = ", ".join(f"{op} {n}" for op, n in fn.ops.most_common() if op != "const")
        console.print(
            f"{indent}  ops ({sum(fn.ops.values()) - fn.ops['const']} + {fn.ops['const']} const): {ops}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
