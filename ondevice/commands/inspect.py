"""`ondevice inspect`: what a Core ML package holds, and how it fares against the ANE rules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ondevice.commands.common import console, one_line_errors


@one_line_errors
def inspect(
    package: Annotated[Path, typer.Argument(help="A Core ML package (PATH.mlpackage).")],
) -> None:
    """Inputs, outputs, states, functions, op histogram, weight bytes and ANE rule violations of a package."""
    from coreml_runtime.ane_rules import compute_plan, inspect_package

    report = inspect_package(package)
    meta = report.metadata
    console.print(f"{package}: {meta['architecture']} · {meta['precision']} · compression {meta['compression']} · "
                  f"kv cache {meta['kv_cache']} · target {meta['deployment_target']} · seq_lens {meta['seq_lens']}"
                  + (f" · context {meta['context']}" if meta.get("context") else ""), highlight=False, soft_wrap=True)
    for name, fn in report.functions.items():
        console.print(f"function [bold]{name}[/bold]", highlight=False)
        for label, features in (("input", fn.inputs), ("state", fn.states), ("output", fn.outputs)):
            for feature in features:
                console.print(f"  {label:6} {feature}", highlight=False)
        ops = ", ".join(f"{op} {n}" for op, n in fn.ops.most_common() if op != "const")
        console.print(f"  ops ({sum(fn.ops.values()) - fn.ops['const']} + {fn.ops['const']} const): {ops}",
                      highlight=False, soft_wrap=True)
    weights = ", ".join(f"{dtype} {n / 2**20:.2f} MiB" for dtype, n in sorted(report.weight_bytes.items()))
    console.print(f"weights: {weights or 'none'}", highlight=False)
    if report.violations:
        from collections import Counter

        console.print(f"[red]ANE rule violations: {len(report.violations)}[/red]")
        for (fn_name, rule), count in Counter((v.function, v.rule) for v in report.violations).items():
            first = next(v for v in report.violations if (v.function, v.rule) == (fn_name, rule))
            console.print(f"  [{fn_name}] {rule}: {count} tensor(s), e.g. {first.op} ({first.op_type}) {first.detail}",
                          highlight=False, soft_wrap=True)
    else:
        console.print("[green]ANE rule violations: none[/green]")
    plan = compute_plan(package)
    if isinstance(plan, str):
        console.print(plan, highlight=False, soft_wrap=True)
    else:
        from collections import Counter

        devices = Counter(device for _, _, device in plan)
        ane = sum(n for d, n in devices.items() if "NeuralEngine" in d)
        share = 100 * ane / max(len(plan), 1)
        console.print(f"compute plan: {ane}/{len(plan)} ops prefer the Neural Engine ({share:.0f}%); "
                      + ", ".join(f"{d} {n}" for d, n in devices.most_common()), highlight=False, soft_wrap=True)
