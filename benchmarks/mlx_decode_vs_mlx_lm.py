"""Decode tokens/s of our MLX GPT-2 against mlx-lm's GPT-2, same weights, same process, warm.

    python benchmarks/mlx_decode_vs_mlx_lm.py [--dtype fp32|fp16] [--tokens 32] [--repeats 3]

Builds a random-init GPT-2 124M-shaped checkpoint (12 layers, 768 wide, 12 heads, 50257 tokens, 1024
positions) with transformers into /tmp (never committed), converts it with `ondevice convert --to mlx`,
and runs both implementations greedily from a 16-token prompt. Times are the median of the repeats;
only the ratio carries to other machines."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

CHECKPOINT = Path("/tmp/ondevice-bench/gpt2-124m-random")


def make_checkpoint(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def time_ours(lm, prompt: list[int], tokens: int) -> float:
    lm.trim(0)
    token = int(np.argmax(lm.prefill(prompt)[-1]))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(lm.decode(token)))
    return tokens / (time.perf_counter() - start)


def time_mlx_lm(model, prompt: list[int], tokens: int) -> float:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)
    token = mx.argmax(logits[0, -1]).item()
    start = time.perf_counter()
    for _ in range(tokens):
        logits = model(mx.array([[token]]), cache=cache)
        token = mx.argmax(logits[0, -1]).item()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mlx_lm

    from convert.checkpoint import load_checkpoint
    from convert.mlx_checkpoint import load_mlx_checkpoint
    from convert.mlx_export import export_mlx
    from ondevice.backends.mlx import load

    hf_dir = make_checkpoint(CHECKPOINT)
    try:
        mlx_lm.load(str(hf_dir))
        print(f"mlx_lm.load({hf_dir}): loads the Hugging Face directory itself")
    except Exception as exc:  # report why, then use our export, which mlx-lm does load
        print(f"mlx_lm.load({hf_dir}) fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    out = CHECKPOINT.parent / f"gpt2-124m-mlx-{args.dtype}"
    export_mlx(hf_dir, out, dtype=args.dtype, overwrite=True, progress=False)
    theirs, _ = mlx_lm.load(str(out))
    ours_hf = load(load_checkpoint(hf_dir), dtype=args.dtype)
    ours_dir = load(load_mlx_checkpoint(out), dtype=None)

    prompt = np.random.default_rng(0).integers(0, 50257, size=16).tolist()
    runs = {
        "ours (from HF checkpoint)": lambda: time_ours(ours_hf, prompt, args.tokens),
        "ours (from MLX export)": lambda: time_ours(ours_dir, prompt, args.tokens),
        "mlx_lm (from MLX export)": lambda: time_mlx_lm(theirs, prompt, args.tokens),
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
