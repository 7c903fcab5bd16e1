"""Decode tokens/s of our MLX GPT-2 against mlx-lm's GPT-2, same weights, same process, warm.

    python benchmarks/mlx_decode_vs_mlx_lm.py [--dtype fp32|fp16] [--tokens 32] [--repeats 3]

Builds a random-init GPT-2 124M-shaped checkpoint (12 layers, 768 wide, 12 heads, 50257 tokens, 1024
positions; `convert.random_checkpoints.make_gpt2_124m`) into /tmp (never committed), exports it for
mlx-lm, and runs both implementations greedily from a 16-token prompt with the timing of
`ondevice.bench.mlx_decode`, the same that `ondevice bench` runs. Times are the median of the repeats;
only the ratio carries to other machines."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from convert.random_checkpoints import make_gpt2_124m
from ondevice.bench.mlx_decode import decode_tokens_per_s, export_for_mlx_lm, mlx_lm_tokens_per_s

CHECKPOINT = Path("/tmp/ondevice-bench/gpt2-124m-random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mlx.core as mx
    import mlx_lm

    from convert.checkpoint import load_checkpoint
    from ondevice.backends.mlx import load

    hf_dir = make_gpt2_124m(CHECKPOINT)
    try:
        mlx_lm.load(str(hf_dir))
        print(f"mlx_lm.load({hf_dir}): loads the Hugging Face directory itself")
    except Exception as exc:  # report why, then use our export, which mlx-lm does load
        print(f"mlx_lm.load({hf_dir}) fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    checkpoint = load_checkpoint(hf_dir)
    ours_dir, theirs, _ = export_for_mlx_lm(checkpoint, CHECKPOINT.parent / f"gpt2-124m-mlx-{args.dtype}", args.dtype)
    ours_hf = load(checkpoint, dtype=args.dtype)

    prompt = np.random.default_rng(0).integers(0, 50257, size=16).tolist()
    runs = {
        "ours (from HF checkpoint)": lambda: decode_tokens_per_s(ours_hf, prompt, args.tokens),
        "ours (from MLX export)": lambda: decode_tokens_per_s(ours_dir, prompt, args.tokens),
        "mlx_lm (from MLX export)": lambda: mlx_lm_tokens_per_s(theirs, prompt, args.tokens),
    }
    for run in runs.values():  # warm-up: first-call allocation and kernel setup
        run()
    results = {name: statistics.median(run() for _ in range(args.repeats)) for name, run in runs.items()}
    reference = results["mlx_lm (from MLX export)"]
    print(
        f"\nGPT-2 124M shape, {args.dtype}, batch 1, {len(prompt)}-token prompt, {args.tokens} decode steps, "
        f"median of {args.repeats}, mlx {mx.__version__} on {mx.default_device()}, mlx_lm {mlx_lm.__version__}"
    )
    print(f"| {'implementation':<28} | tokens/s | ours/mlx_lm |\n|{'-' * 30}|----------|-------------|")
    for name, rate in results.items():
        print(f"| {name:<28} | {rate:8.2f} | {rate / reference:11.2f} |")


if __name__ == "__main__":
    main()
