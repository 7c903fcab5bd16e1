"""The `ondevice` command. Each subcommand is a thin shell over a library function; errors of our
own types become one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from canonical.errors import OndeviceError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run Hugging Face transformer checkpoints on Apple Silicon: Neural Engine (Core ML), MLX, CPU.",
)
console = Console()
errors = Console(stderr=True)

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2


@app.callback()
def _group() -> None:
    """Keeps `ondevice` a command group even while it has a single subcommand."""


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"


def one_line_errors(command):
    """Print our own errors as `error: ...` and exit 2; everything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OndeviceError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


@app.command()
@one_line_errors
def verify(
    checkpoint: Annotated[str, typer.Argument(
        help="Checkpoint directory, bundled name, or cached model id; or a PATH.mlpackage (with --reference).")],
    backend: Annotated[str, typer.Option(help="Backend to check against the transformers CPU reference.")] = (
        "torch-ane"
    ),
    seq_len: Annotated[int | None, typer.Option(help="Tokens per input (default: 64, capped by positions).")] = None,
    dtype: Annotated[Precision, typer.Option(help="Precision of the backend under test.")] = Precision.fp32,
    seed: Annotated[int, typer.Option(help="Seed of the random token ids.")] = 0,
    reference: Annotated[str | None, typer.Option(
        help="For a .mlpackage or an MLX directory: the checkpoint it was converted from.")] = None,
) -> None:
    """Compare a backend (or a Core ML package) with the transformers CPU reference on the same random token ids."""
    from ondevice.verify import verify as run_verify
    from ondevice.verify import verify_package

    if checkpoint.rstrip("/").endswith(".mlpackage"):
        if reference is None:
            raise OndeviceError(f"{checkpoint}: verifying a package needs --reference CHECKPOINT")
        report = verify_package(checkpoint, reference, seq_len=seq_len, seed=seed)
    elif reference is not None:
        from ondevice.verify import verify_mlx_export

        report = verify_mlx_export(checkpoint, reference, seq_len=seq_len, seed=seed)
    else:
        report = run_verify(checkpoint, backend=backend, seq_len=seq_len, dtype=dtype.value, seed=seed)
    tol = report.tolerance
    table = Table(
        title=f"{report.model_type} · {report.backend} {report.dtype} vs transformers CPU fp32 · "
        f"seq_len {report.seq_len}",
        caption=f"bounds ({report.dtype}): max |err| ≤ {tol.rel_max_abs:g} × scale, cosine ≥ {tol.cosine:g}",
    )
    table.add_column("output", no_wrap=True)
    for column in ("max |err|", "scale", "rel. error", "cosine", "result"):
        table.add_column(column, justify="right", no_wrap=True)
    for c in report.comparisons:
        verdict = "[green]ok[/green]" if c.within(tol) else "[red]FAIL[/red]"
        table.add_row(c.name, f"{c.max_abs:.3e}", f"{c.scale:.3g}", f"{c.rel_max_abs:.2e}", f"{c.cosine:.8f}", verdict)
    console.print(f"checkpoint: {report.checkpoint}", highlight=False, soft_wrap=True)
    console.print(table)
    if report.greedy_match is not None:
        steps = len(report.greedy_reference)
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        verdict = "[green]match[/green]" if report.greedy_match else "[red]DIFFER[/red]"
        if not report.greedy_required:
            verdict += " (reported: exact agreement is required of lossless formats only)"
        console.print(f"greedy tokens: {same}/{steps} {verdict}", soft_wrap=True)
        if not report.greedy_match:
            console.print(f"  ours:      {report.greedy_ours}\n  reference: {report.greedy_reference}")
    console.print("[green]PASS[/green]" if report.passed else "[red]FAIL[/red]")
    if not report.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)


class Target(StrEnum):
    coreml = "coreml"
    mlx = "mlx"


@app.command()
@one_line_errors
def convert(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, bundled name, or cached model id.")],
    to: Annotated[Target, typer.Option("--to", help="coreml: an .mlpackage for the Neural Engine; mlx: MLX weights.")],
    out: Annotated[Path, typer.Option("--out", help="Output path (PATH.mlpackage for coreml, a directory for mlx).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    dtype: Annotated[
        str | None, typer.Option(help="Weights/compute precision: fp16 (default), fp32, bf16 (mlx).")
    ] = None,
    seq_len: Annotated[
        list[int] | None, typer.Option("--seq-len", help="Core ML: Sequence length(s); repeat to enumerate (encoders).")
    ] = None,
    context: Annotated[int | None, typer.Option(help="Core ML, GPT-2: KV cache capacity in tokens.")] = None,
    target: Annotated[
        str, typer.Option(help="Core ML: Minimum deployment target, e.g. iOS18, iOS17, macOS15.")
    ] = "iOS18",
    kv_cache: Annotated[
        str, typer.Option(help="Core ML, GPT-2: state (iOS 18+) or io (cache as inputs/outputs).")
    ] = "state",
    compress: Annotated[str, typer.Option(help="Core ML: none, int8, int4, palettize4, palettize6.")] = "none",
    calibration_text: Annotated[
        Path | None,
        typer.Option(help="Core ML int4, GPT-2: GPTQ-calibrate the 4-bit weights on this text (one paragraph a "
                     "line, .txt or .txt.gz): the training text, never text you evaluate on."),
    ] = None,
    quantize: Annotated[int | None, typer.Option(help="MLX: Affine weight quantization bits: 4 or 8.")] = None,
    group_size: Annotated[int, typer.Option(help="MLX: Quantization group size.")] = 64,
) -> None:
    """Convert a checkpoint into a Core ML package or MLX weights."""
    if to is Target.coreml:
        from convert.coreml import CoreMLOptions, convert_to_coreml

        options = CoreMLOptions(
            dtype=dtype or "fp16",
            seq_lens=tuple(seq_len or ()),
            context=context,
            target=target,
            kv_cache=kv_cache,
            compress=compress,
            calibration_text=calibration_text,
        )
        written = convert_to_coreml(checkpoint, out, options, overwrite=overwrite)
    else:
        from convert.mlx_export import export_mlx

        written = export_mlx(
            checkpoint, out, dtype=dtype or "fp16", quantize=quantize, group_size=group_size, overwrite=overwrite
        )
    console.print(f"wrote {written}", highlight=False, soft_wrap=True)


@app.command()
@one_line_errors
def generate(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint or MLX directory, bundled name, or model id.")],
    prompt: Annotated[str | None, typer.Argument(help="Text, tokenized with the checkpoint's tokenizer.")] = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Prompt as token ids: '464, 318'.")] = None,
    backend: Annotated[str, typer.Option(help="torch-ane or mlx.")] = "mlx",
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16, bf16 (mlx). Default: fp32.")] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher samples more freely.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Sample within probability mass p.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler, for repeatable runs.")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Keep going past the end-of-text token.")] = False,
) -> None:
    """Continue a prompt on a backend, streaming the text (or token ids) as it is generated."""
    import time

    from canonical.errors import InputError
    from ondevice.generate import Sampling, TextStream, load_tokenizer, parse_ids
    from ondevice.generate import generate as run_generate

    if (prompt is None) == (ids is None):
        raise InputError("give a prompt as text or as --ids, not both and not neither")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # checks the values
    lm, directory = _load_causal_lm(checkpoint, backend, dtype)
    tokenizer = load_tokenizer(directory) if ids is None else None
    prompt_ids = parse_ids(ids) if ids is not None else tokenizer.encode(prompt)
    stream = TextStream(tokenizer) if tokenizer is not None else None
    stop = () if ignore_eos else lm.config.eos_token_ids
    start, count = time.perf_counter(), 0
    for token in run_generate(lm, prompt_ids, max_tokens, sampling, stop):
        count += 1
        sys.stdout.write(stream.push(token) if stream is not None else f"{token} ")
        sys.stdout.flush()
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    errors.print(f"{count} tokens in {elapsed:.2f} s ({count / elapsed:.1f} tokens/s, prefill included) "
                 f"on {lm.backend}", highlight=False, style="dim")


def _load_causal_lm(spec: str, backend: str, dtype: str | None):
    """A CausalLM from a Hugging Face checkpoint (any backend) or an exported MLX directory (mlx)."""
    from canonical.errors import InputError
    from convert.checkpoint import load_checkpoint
    from convert.mlx_checkpoint import is_mlx_checkpoint, load_mlx_checkpoint
    from ondevice.backends import load_backend

    if is_mlx_checkpoint(spec):
        if backend != "mlx":
            raise InputError(f"{spec}: an MLX directory runs on --backend mlx, not {backend}")
        ckpt, dtype = load_mlx_checkpoint(spec), dtype  # None keeps the directory's own dtype
    else:
        ckpt, dtype = load_checkpoint(spec), dtype or "fp32"
    if not ckpt.config.is_causal:
        raise InputError(f"{ckpt.directory}: a {ckpt.model_type} encoder cannot generate text (a causal LM can)")
    return load_backend(backend, ckpt, dtype=dtype), ckpt.directory


@app.command()
@one_line_errors
def predict(
    text: Annotated[str | None, typer.Argument(help="The text typed so far; '-' or nothing reads stdin.")] = None,
    model: Annotated[str, typer.Option(help="Causal LM checkpoint (default: the bundled keyboard model).")] = (
        "keyboard-gpt2"
    ),
    backend: Annotated[str, typer.Option(help="torch-ane, mlx, or coreml (a converted package, on a Mac).")] = (
        "torch-ane"
    ),
    k: Annotated[int, typer.Option("-k", help="How many suggestions.")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a line of words.")] = False,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Held-out text to evaluate on.")] = None,
    eval_lines: Annotated[int | None, typer.Option(help="Evaluate on the first N lines only.")] = None,
    baseline_text: Annotated[Path | None, typer.Option(help="Training text of the n-gram baseline (default: the "
                                                       "bundled model's).")] = None,
) -> None:
    """Next-word suggestions, or completions of the word being typed; or, with --eval, quality figures."""
    import json

    from ondevice.keyboard import Predictor

    predictor = Predictor(model, backend=backend, k=k)
    if eval_file is not None:
        from ondevice.keyboard.report import evaluate_file

        summary = evaluate_file(predictor, eval_file, eval_lines, baseline_text)
        if json_output:
            console.print_json(json.dumps(summary))
        else:
            from ondevice.keyboard.report import eval_table

            console.print(eval_table(summary))
        return
    if text is None or text == "-":
        text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    suggestions = predictor.suggest(text)
    if json_output:
        console.print_json(json.dumps([{"word": s.word, "probability": s.probability} for s in suggestions]))
    elif suggestions:
        console.print("  ".join(s.word for s in suggestions), highlight=False)
    else:
        console.print("(no suggestion)")


@app.command(name="type")
@one_line_errors
def type_(
    model: Annotated[str, typer.Option(help="Causal LM checkpoint (default: the bundled keyboard model).")] = (
        "keyboard-gpt2"
    ),
    backend: Annotated[str, typer.Option(help="torch-ane, mlx, or coreml.")] = "torch-ane",
) -> None:
    """Type in the terminal with suggestions updated on every keystroke (Tab/F1-F3 accept, Enter quits)."""
    from ondevice.keyboard import Predictor
    from ondevice.keyboard.terminal import run_terminal

    run_terminal(Predictor(model, backend=backend))


@app.command()
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


@app.command()
@one_line_errors
def bench(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="keyboard-gpt2, all-MiniLM-L6-v2, gpt2-124m-random (made locally) or a checkpoint "
        "directory; repeatable.")] = None,
    backends: Annotated[list[str] | None, typer.Option(
        "--backends", help="reference, torch-ane, mlx, coreml; peers mlx_lm, ane_transformers (repeat, or "
        "comma-separate).")] = None,
    seq_lens: Annotated[list[str] | None, typer.Option(
        "--seq-lens", help="Prefill/encode lengths, e.g. 16,64 (default 16..512; clipped to the model's positions).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small models, lengths 16 and 64, 3 repeats: a few minutes.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: benchmarks/results).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads of torch, MLX's CPU backend and BLAS.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per measurement (median reported).")] = None,
    batch: Annotated[int, typer.Option(help="Encoder batch size.")] = 1,
) -> None:
    """Benchmark every backend and peer on the same models and inputs: table, bench.json, bench.md, bench.png."""
    from canonical.errors import InputError
    from ondevice.bench.run import RESULTS, BenchOptions, run_bench

    def split(values: list[str] | None) -> list[str] | None:
        return [part.strip() for v in values for part in v.split(",") if part.strip()] if values else None

    try:
        lengths = [int(n) for n in split(seq_lens)] if seq_lens else None
    except ValueError as exc:
        raise InputError(f"--seq-lens takes whole numbers: {exc}") from None
    if (lengths is not None and min(lengths) < 1) or batch < 1 or (repeats is not None and repeats < 1):
        raise InputError("--seq-lens, --batch and --repeats must be positive")
    run_bench(BenchOptions(models=model, backends=split(backends), seq_lens=lengths, quick=quick, out=out or RESULTS,
                           threads=threads, repeats=repeats, batch=batch), console)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
