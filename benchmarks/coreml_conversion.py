"""Core ML conversion cost and fidelity: conversion time, package size and the numpy evaluator's
parity with the transformers reference, per model and compression. Prints a markdown table.

    python -m benchmarks.coreml_conversion --models gpt2-124m minilm --compress none int8 int4

`gpt2-124m` is a random-init GPT-2 with GPT-2 small's shapes (12 layers, 768 wide, 12 heads, 50257
vocabulary, 1024 positions), written to a temporary directory: the timing and size are those of the
real model; parity on random weights is a check of the conversion, not of real text. Times are for
the machine it runs on (noisy, shared); nothing is written outside the temporary directory."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_gpt2_124m(directory: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(name: str, checkpoint: Path, compress: str, out_dir: Path, context: int, prefill: int, seq_len: int,
            target: str) -> dict:
    from convert.coreml import CoreMLOptions, convert_to_coreml
    from ondevice.verify import verify_package

    causal = name.startswith("gpt2")
    options = CoreMLOptions(context=context if causal else None, seq_lens=(prefill if causal else seq_len,),
                            compress=compress, target=target)
    out = out_dir / f"{name}-{compress}.mlpackage"
    start = time.perf_counter()
    convert_to_coreml(checkpoint, out, options, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = verify_package(str(out), str(checkpoint), seq_len=seq_len)
    eval_seconds = time.perf_counter() - start
    worst = min(report.comparisons, key=lambda c: c.cosine)
    row = {
        "model": name, "compress": compress, "convert_s": seconds, "size_mib": package_bytes(out) / 2**20,
        "output": worst.name, "cosine": worst.cosine, "rel_err": worst.rel_max_abs, "eval_s": eval_seconds,
        "greedy": "-" if report.greedy_ours is None else
        f"{sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))}/"
        f"{len(report.greedy_reference)}",
    }
    print(_row(row), flush=True)
    return row


HEADER = ("| model | compression | convert (s) | package (MiB) | worst output | cosine | max err / scale | greedy | "
          "evaluator (s) |\n|---|---|---:|---:|---|---:|---:|---:|---:|")


def _row(r: dict) -> str:
    return (f"| {r['model']} | {r['compress']} | {r['convert_s']:.1f} | {r['size_mib']:.1f} | {r['output']} | "
            f"{r['cosine']:.6f} | {r['rel_err']:.2e} | {r['greedy']} | {r['eval_s']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "gpt2-124m"], choices=["minilm", "gpt2-124m"])
    parser.add_argument("--compress", nargs="+", default=["none", "int8", "int4", "palettize6", "palettize4"])
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens compared (GPT-2 prompt; encoder length)")
    parser.add_argument("--target", default="iOS18")
    args = parser.parse_args()
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory(prefix="coreml-bench-") as tmp:
        tmp = Path(tmp)
        rows = []
        print(HEADER, flush=True)
        for name in args.models:
            if name == "minilm":
                from tests.checkpoints import minilm_path

                checkpoint = minilm_path()
            else:
                checkpoint = make_gpt2_124m(tmp / "gpt2-124m")
            for compress in args.compress:
                rows.append(measure(name, checkpoint, compress, tmp, args.context, args.prefill, args.seq_len,
                                    args.target))
                for leftover in tmp.glob("*.mlpackage"):  # keep the disk use to one package at a time
                    import shutil

                    shutil.rmtree(leftover)
        print("\n" + HEADER)
        for r in rows:
            print(_row(r))


if __name__ == "__main__":
    main()
