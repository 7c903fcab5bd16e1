"""Core ML conversion cost and fidelity of one model and compression, for
`benchmarks/coreml_conversion.py`: conversion time, package size, and the numpy evaluator's parity with
the transformers reference (worst output, greedy agreement for a causal LM)."""

from __future__ import annotations

import time
from pathlib import Path


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def conversion_row(
    name: str,
    checkpoint: Path,
    compress: str,
    out_dir: Path,
    context: int,
    prefill: int,
    seq_len: int,
    target: str,
    causal: bool,
) -> dict:
    """Convert `checkpoint` with `compress` into `out_dir`, verify the package against the reference on
    `seq_len` tokens, and return the row: times in s, size in MiB, the worst output's cosine and error."""
    from convert.coreml import CoreMLOptions, convert_to_coreml
    from ondevice.verify import verify_package

    options = CoreMLOptions(
        context=context if causal else None,
        seq_lens=(prefill if causal else seq_len,),
        compress=compress,
        target=target,
    )
    out = Path(out_dir) / f"{name}-{compress}.mlpackage"
    start = time.perf_counter()
    convert_to_coreml(checkpoint, out, options, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = verify_package(str(out), str(checkpoint), seq_len=seq_len)
    eval_seconds = time.perf_counter() - start
    worst = min(report.comparisons, key=lambda c: c.cosine)
    greedy = "-"
    if report.greedy_ours is not None and report.greedy_reference is not None:  # set together
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        greedy = f"{same}/{len(report.greedy_reference)}"
    return {
        "model": name,
        "compress": compress,
        "convert_s": seconds,
        "size_mib": package_bytes(out) / 2**20,
        "output": worst.name,
        "cosine": worst.cosine,
        "rel_err": worst.rel_max_abs,
        "eval_s": eval_seconds,
        "greedy": greedy,
    }
