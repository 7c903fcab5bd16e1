"""Per-keystroke latency of predictive text, and what KV-cache reuse buys, in one run.

    python -m benchmarks.keyboard_latency [--model keyboard-gpt2] [--backend torch-ane] [--lines 40]

1. Replays held-out text one key at a time (every prefix of every paragraph) through one Predictor
   and reports p50/p95 of the time each keystroke's suggestions take.
2. At a 64-token context: types 24 more keys after a 64-token prefix, (a) reusing the cache as the
   engine does, (b) recomputing the whole context on every keystroke, and reports (b)/(a), for the
   whole keystroke and for its context part alone (the word search that follows is the same work
   either way, bar the expansions memoised while typing inside a word).
Timings hold for the machine named in the output only; the ratio is the portable figure. A keystroke is
a few batched forwards, each reading every weight once, so the output states how fast this machine reads
memory: the copy bandwidth of one thread over an array of the size of the model's weights (about the
weights' working set) and of 512 MiB (DRAM), as `ondevice.bench.bandwidth` measures it. The keyboard runs as
users get it: the model's lexicon and blend (`keyboard.json`) included. The measurements are
`ondevice.bench.keyboard`'s, the same that `ondevice bench` runs."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ondevice.bench.bandwidth import measure_bandwidth
from ondevice.bench.keyboard import replay, reuse_vs_recompute
from ondevice.keyboard import Predictor
from ondevice.keyboard.report import read_lines

RESULTS = Path("bench-results")  # in the working directory; the committed figures: --out benchmarks/results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="keyboard-gpt2")
    parser.add_argument("--backend", default="torch-ane")
    parser.add_argument("--text", type=Path, default=None, help="held-out text (default: the bundled model's)")
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    predictor = Predictor(args.model, backend=args.backend, max_context_tokens=96)
    text = args.text or predictor.checkpoint_dir / "heldout.txt"
    lines = read_lines(text, args.lines)
    predictor.suggest("Warm up the model. ")
    keystrokes = replay(Predictor(args.model, backend=args.backend), lines)
    times = reuse_vs_recompute(predictor, read_lines(text))
    reuse, recompute = times.reuse, times.recompute
    weight_bytes = _weight_bytes(predictor)
    working_set = measure_bandwidth(mib=max(1, round(weight_bytes / 2**20)), repeats=20, threads=1)
    dram = measure_bandwidth(mib=512, repeats=3, threads=1)
    result = {
        "benchmark": "keyboard_latency",
        "model": str(args.model),
        "backend": args.backend,
        "precision": "fp32",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "system": platform.platform(),
            "python": platform.python_version(),
            "weight_bytes": weight_bytes,
            "copy_gb_s_weight_sized_1_thread": working_set["bytes_per_s"] / 1e9,
            "copy_gb_s_512_mib_1_thread": dram["bytes_per_s"] / 1e9,
        },
        "lexicon": predictor.lexicon is not None,
        "blend": vars(predictor.blend) if predictor.lexicon else None,
        "keystrokes": len(keystrokes),
        "keystroke_p50_ms": float(np.percentile(keystrokes, 50)),
        "keystroke_p95_ms": float(np.percentile(keystrokes, 95)),
        "context_tokens": 64,
        "reuse_keystrokes": len(reuse),
        "reuse_mean_ms": float(np.mean(reuse)),
        "recompute_mean_ms": float(np.mean(recompute)),
        "reuse_p95_ms": float(np.percentile(reuse, 95)),
        "recompute_p95_ms": float(np.percentile(recompute, 95)),
    }
    result["reuse_speedup"] = result["recompute_mean_ms"] / result["reuse_mean_ms"]
    result["context_reuse_mean_ms"] = float(np.mean(times.reuse_context))
    result["context_recompute_mean_ms"] = float(np.mean(times.recompute_context))
    result["context_reuse_speedup"] = result["context_recompute_mean_ms"] / result["context_reuse_mean_ms"]

    machine = result["machine"]
    table = Table(
        title=f"predictive text · {args.backend} fp32 · batch 1 · {machine['cpu']} · reads "
        f"{machine['copy_gb_s_weight_sized_1_thread']:.1f} GB/s ({weight_bytes / 1e6:.0f} MB of "
        f"weights), {machine['copy_gb_s_512_mib_1_thread']:.1f} GB/s from DRAM, 1 thread"
    )
    for column in ("measure", "value"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(f"keystroke latency p50 ({len(keystrokes)} keys)", f"{result['keystroke_p50_ms']:.2f} ms")
    table.add_row("keystroke latency p95", f"{result['keystroke_p95_ms']:.2f} ms")
    table.add_row(f"64-token context, reuse cache (mean of {len(reuse)})", f"{result['reuse_mean_ms']:.2f} ms")
    table.add_row("64-token context, recompute each keystroke (mean)", f"{result['recompute_mean_ms']:.2f} ms")
    table.add_row("cache reuse speed-up, whole keystroke (recompute / reuse)", f"{result['reuse_speedup']:.1f}x")
    table.add_row(
        "  of which the context: reuse / recompute (mean)",
        f"{result['context_reuse_mean_ms']:.2f} / {result['context_recompute_mean_ms']:.2f} ms",
    )
    table.add_row("cache reuse speed-up, context alone", f"{result['context_reuse_speedup']:.1f}x")
    Console().print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keyboard_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(keystrokes, reuse, recompute, args.out / "keyboard_latency.png")


def _weight_bytes(predictor) -> int:
    """Bytes of the weights one forward reads (the torch backend's model; 0 where it is not a torch module)."""
    model = getattr(predictor.lm, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return 0
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _plot(keystrokes: list[float], reuse: list[float], recompute: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.hist(keystrokes, bins=60, color="tab:blue")
    left.axvline(np.percentile(keystrokes, 95), color="k", linestyle="--", label="p95")
    left.set(title="per-keystroke latency, held-out replay", xlabel="ms", ylabel="keystrokes")
    left.legend()
    right.boxplot([reuse, recompute], tick_labels=["reuse cache", "recompute"])
    right.set(title="64-token context", ylabel="ms per keystroke", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
