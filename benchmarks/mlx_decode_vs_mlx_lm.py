"""Decode tokens/s and prefill time of our MLX model against mlx-lm's, same export, same process, warm.

    python benchmarks/mlx_decode_vs_mlx_lm.py [--model smollm2-135m-random] [--dtype fp32|fp16|bf16]
        [--tokens 32] [--prefill 64] [--repeats 5] [--threads N]

`--model`: a generated model of `ondevice bench` (`gpt2-124m-random`, the default; `smollm2-135m-random`;
`qwen3-0.6b-random`: realistic shapes, random init, made once by `convert.random_checkpoints` into
`~/.cache/ondevice/bench` or `$ONDEVICE_BENCH_CACHE`, never downloaded, never committed) or a checkpoint
directory. The checkpoint is exported once for mlx-lm (`ondevice.bench.mlx_decode.export_for_mlx_lm`:
mlx-lm's weight names) and both implementations load that same export; ours is also run from the Hugging
Face checkpoint directly. Greedy decode from a 16-token prompt and one prefill into an empty cache, timed
as `ondevice bench` times them (`ondevice.bench.measure`): a warm-up, then repeats interleaved (ours,
theirs, theirs, ours, ...) so that drift of a busy machine falls on both. Each figure is the median of the
repeats with its p10-p90 spread; the ratio is of the medians, and its spread is the p10-p90 of the
per-round ratios (each round's runs are neighbours in time). Only the ratios carry to other machines."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ondevice.bench.measure import Stats, interleaved, seconds
from ondevice.bench.mlx_decode import decode_tokens_per_s, export_for_mlx_lm, mlx_lm_prefill_s, mlx_lm_tokens_per_s
from ondevice.bench.run import GENERATED, default_cache, resolve_model

PROMPT_TOKENS = 16


def _paired(runs: dict, repeats: int) -> tuple[dict[str, Stats], list[dict[str, float]]]:
    """`interleaved` keeping every round's values, so that per-round ratios can be formed."""
    rounds: list[dict[str, float]] = []
    current: dict[str, float] = {}

    def recording(name, run):
        def call() -> float:
            value = run()
            current[name] = value
            if len(current) == len(runs):
                rounds.append(dict(current))
                current.clear()
            return value

        return call

    for run in runs.values():  # warm-up outside the recording: first-call allocation and kernel setup
        run()
    stats = interleaved({name: recording(name, run) for name, run in runs.items()}, repeats, warmup=0)
    return stats, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=GENERATED, help="a generated model name or a checkpoint directory")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--tokens", type=int, default=32, help="decode steps per repeat")
    parser.add_argument("--prefill", type=int, default=64, help="prefill length (0: no prefill figure)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="OMP/BLAS threads (set before MLX starts)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache())
    args = parser.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
            os.environ[var] = str(args.threads)

    import mlx.core as mx
    import mlx_lm

    from convert.checkpoint import load_checkpoint
    from ondevice.backends.mlx import load
    from ondevice.bench.machine import describe_machine, short_machine

    name, hf_dir = resolve_model(args.model, args.cache_dir)
    checkpoint = load_checkpoint(hf_dir)
    pair = export_for_mlx_lm(checkpoint, args.cache_dir / "mlx" / f"{name}-mlx-{args.dtype}", args.dtype)
    if pair is None:
        raise SystemExit(f"{name}: mlx-lm cannot run this checkpoint with our logits")
    ours_export, theirs, _ = pair
    ours_hf = load(checkpoint, dtype=args.dtype)
    ids = (
        np.random.default_rng(0)
        .integers(0, checkpoint.config.vocab_size, size=max(args.prefill, PROMPT_TOKENS))
        .tolist()
    )
    prompt = ids[:PROMPT_TOKENS]

    def prefill(lm, n):
        lm.trim(0)
        return seconds(lambda: lm.prefill(ids[:n]))

    tables = []
    decode = {
        "ours (MLX export)": lambda: decode_tokens_per_s(ours_export, prompt, args.tokens),
        "mlx_lm (MLX export)": lambda: mlx_lm_tokens_per_s(theirs, prompt, args.tokens),
        "ours (HF checkpoint)": lambda: decode_tokens_per_s(ours_hf, prompt, args.tokens),
    }
    tables.append(("decode", "tokens/s", 1.0, *_paired(decode, args.repeats), True))
    if args.prefill:
        prefills = {
            "ours (MLX export)": lambda: prefill(ours_export, args.prefill),
            "mlx_lm (MLX export)": lambda: mlx_lm_prefill_s(theirs, ids[: args.prefill]),
            "ours (HF checkpoint)": lambda: prefill(ours_hf, args.prefill),
        }
        tables.append((f"prefill {args.prefill}", "ms", 1e3, *_paired(prefills, args.repeats), False))

    mlx_version = mx.__version__  # type: ignore[attr-defined]  # mlx.core's stubs omit __version__
    print(
        f"\n{name}, {args.dtype}, batch 1, decode: {args.tokens} greedy steps after a {PROMPT_TOKENS}-token prompt; "
        f"{args.repeats} interleaved repeats after a warm-up; mlx {mlx_version} on {mx.default_device()}, "
        f"mlx_lm {mlx_lm.__version__}\nmachine: {short_machine(describe_machine())}"
    )
    for what, unit, scale, stats, rounds, higher_is_better in tables:
        peer = "mlx_lm (MLX export)"
        print(f"\n| {what:<22} | {unit + ' median':>12} | p10-p90 | ours/mlx_lm speed (median, p10-p90 of rounds) |")
        print(f"|{'-' * 24}|{'-' * 14}|---------|{'-' * 47}|")
        for impl, s in stats.items():
            s = s.scaled(scale)
            if impl == peer:
                ratio = "1"
            else:
                per_round = [(r[impl] / r[peer]) if higher_is_better else (r[peer] / r[impl]) for r in rounds]
                m = stats[impl].median
                p = stats[peer].median
                rs = Stats.of(per_round)
                ratio = f"{(m / p if higher_is_better else p / m):.3f} ({rs.p10:.3f}-{rs.p90:.3f})"
            print(f"| {impl:<22} | {s.median:12.2f} | {s.p10:.2f}-{s.p90:.2f} | {ratio:<45} |")


if __name__ == "__main__":
    main()
