"""The harness's parent process: plan the jobs, run each in a fresh child process, gather the records,
and write bench.json, bench.md and bench.png.

    ondevice bench [--model M ...] [--backends ...] [--seq-lens ...] [--quick] [--out DIR]"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ondevice.bench.machine import describe_machine, short_machine
from ondevice.bench.records import Subject, failed, record, skipped, speed_ratio

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the ondevice package
# Default output: bench-results/ in the working directory, never inside the package or its source tree (the
# committed results of benchmarks/results are written there by naming it: --out benchmarks/results).
RESULTS = Path("bench-results")
BACKENDS = ("reference", "torch-ane", "mlx", "coreml")
PEERS = ("mlx_lm", "ane_transformers")
GENERATED = "gpt2-124m-random"  # GPT-2 small's shapes, random init: made here, never downloaded
# Realistic shapes, random init, made here by `convert.random_checkpoints` (never downloaded): name -> factory.
GENERATED_MODELS = {
    GENERATED: "make_gpt2_124m",
    "smollm2-135m-random": "make_smollm2_135m",  # SmolLM2-135M: Llama, GQA 3:1, tied head
    "qwen3-0.6b-random": "make_qwen3_06b",  # Qwen3-0.6B: q/k norm, head_dim 128, tied head
    "gemma3-270m-random": "make_gemma3_270m",  # Gemma 3 270M: sliding-window layers, 262,144-token tied head
    # billions of parameters, bf16: Core ML gets a chunked model (ondevice.bench.runners.package_path)
    "llama3.2-1b-random": "make_llama32_1b",
    "qwen3-1.7b-random": "make_qwen3_17b",
    "llama3.2-3b-random": "make_llama32_3b",
}
FULL_MODELS = ("keyboard-gpt2", GENERATED, "all-MiniLM-L6-v2")
QUICK_MODELS = ("keyboard-gpt2", "all-MiniLM-L6-v2")
FULL_SEQ_LENS = (16, 64, 128, 256, 512)
QUICK_SEQ_LENS = (16, 64)
COREML_COMPRESSIONS = ("none", "int8")


def default_cache() -> Path:
    return Path(os.environ.get("ONDEVICE_BENCH_CACHE", Path.home() / ".cache" / "ondevice" / "bench"))


@dataclass
class BenchOptions:
    """What to run; None means the default of the mode (full, or --quick: small models, fewer repeats)."""

    models: list[str] | None = None
    backends: list[str] | None = None  # backends and peers, by name
    seq_lens: list[int] | None = None
    quick: bool = False
    out: Path = RESULTS
    threads: int | None = None
    repeats: int | None = None
    budget_s: float | None = 30.0  # per measurement: stop repeating past this once 3 repeats are done
    min_time_s: float | None = 5.0  # per measurement: quick ones repeat (up to 4x) until they took this long
    batch: int = 1
    precision: str = "fp32"  # of torch-ane and mlx (the reference is fp32; Core ML fp16 and int8)
    decode_tokens: int | None = None
    keystrokes: int | None = None  # about how many keys of held-out text to replay
    reuse_lines: int | None = None  # paragraphs typed after a 64-token context for the cache-reuse ratio
    bandwidth_mib: int | None = None
    cache_dir: Path = field(default_factory=default_cache)
    isolate: bool = True  # each (model, backend) in a fresh process: cold loads and per-backend peak memory
    job_timeout_s: float = 3600.0  # the full run of a 124M model on MLX's CPU backend takes ~30 min
    # Set by `resolved`: whether the user named the backends and the lengths (asked for, they must apply to every
    # model; defaults are fitted to each model instead).
    backends_given: bool = False
    seq_lens_given: bool = False

    def resolved(self) -> BenchOptions:
        q = self.quick
        return replace(
            self,
            backends_given=self.backends is not None,
            seq_lens_given=self.seq_lens is not None,
            models=list(self.models or (QUICK_MODELS if q else FULL_MODELS)),
            backends=list(self.backends or (*BACKENDS, *PEERS)),
            seq_lens=sorted(set(self.seq_lens or (QUICK_SEQ_LENS if q else FULL_SEQ_LENS))),
            repeats=self.repeats or (3 if q else 7),
            decode_tokens=self.decode_tokens if self.decode_tokens is not None else (32 if q else 64),
            keystrokes=self.keystrokes if self.keystrokes is not None else (150 if q else 2000),
            reuse_lines=self.reuse_lines if self.reuse_lines is not None else (1 if q else 8),
            bandwidth_mib=self.bandwidth_mib or (256 if q else 1024),
        )


def resolve_model(spec: str, cache_dir: Path) -> tuple[str, Path]:
    """(name shown in the tables, checkpoint directory) for a bundled name, a generated model (made once into
    `cache_dir`, reused after), or a dir."""
    from convert.locate import expand_user, resolve_checkpoint

    if spec in GENERATED_MODELS:
        from transformers.utils import logging as hf_logging

        from convert import random_checkpoints

        hf_logging.disable_progress_bar()  # keep the terminal to our progress bar and tables
        return spec, getattr(random_checkpoints, GENERATED_MODELS[spec])(cache_dir / spec)
    directory = resolve_checkpoint(spec)
    return (directory.name if expand_user(spec).is_dir() else spec), directory


def _resolved(options: BenchOptions) -> tuple[list[str], list[str], list[int]]:
    """(models, backends, seq_lens) of options that went through `BenchOptions.resolved` (None before it)."""
    if options.models is None or options.backends is None or options.seq_lens is None:
        raise ValueError("BenchOptions.resolved() first: models, backends and seq_lens are not filled in")
    return options.models, options.backends, options.seq_lens


def plan_jobs(options: BenchOptions) -> tuple[list[dict], list[dict]]:
    """(jobs to run, records known without running anything: backends that cannot run here)."""
    from canonical.errors import InputError
    from convert.checkpoint import read_model_config
    from ondevice.bench.peers import ANE_TRANSFORMERS, MLX_LM, peer_unavailable
    from ondevice.bench.runners import COMPUTE_UNITS, clip_seq_lens, coreml_unavailable, package_path

    models, backends, seq_lens = _resolved(options)
    unknown = [b for b in backends if b not in (*BACKENDS, *PEERS)]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)} (choose from {', '.join((*BACKENDS, *PEERS))})")
    common = {
        key: getattr(options, key)
        for key in (
            "batch",
            "repeats",
            "decode_tokens",
            "keystrokes",
            "reuse_lines",
            "threads",
            "precision",
            "budget_s",
            "min_time_s",
        )
    }
    common |= {
        "warmup": 1,
        "compare_reference": "reference" in backends,
        "cache_dir": str(options.cache_dir),
        "isolated": options.isolate,
    }
    jobs, known, encoders = [], [], []
    for spec in models:
        name, directory = resolve_model(spec, options.cache_dir)
        model_type, config = read_model_config(directory)
        check_model(directory)
        _check_lengths(name, config, options)
        if not config.is_causal:
            encoders.append(f"{name} is a {model_type} encoder")
        base = common | {
            "model": name,
            "checkpoint": str(directory),
            "seq_lens": clip_seq_lens(seq_lens, config.max_positions),
        }
        for backend in backends:
            if backend in ("reference", "torch-ane", "mlx"):
                precision = "fp32" if backend == "reference" else options.precision
                jobs.append(base | {"job": "backend", "backend": backend, "precision": precision})
            elif backend == "coreml":
                why = coreml_unavailable()
                if why:
                    known.append(
                        skipped(
                            Subject(
                                name,
                                "coreml",
                                "+".join(COMPUTE_UNITS),
                                "fp16",
                                "+".join(COREML_COMPRESSIONS),
                                "coreml-package",
                            ),
                            why,
                        )
                    )
                    continue
                for compression in COREML_COMPRESSIONS:
                    package = package_path(options.cache_dir, name, compression, directory)
                    jobs.append(
                        base
                        | {"job": "convert", "compression": compression, "package": str(package), "precision": "fp16"}
                    )
                    jobs += [
                        base
                        | {
                            "job": "backend",
                            "backend": "coreml",
                            "precision": "fp16",
                            "compression": compression,
                            "package": str(package),
                            "compute_units": units,
                        }
                        for units in COMPUTE_UNITS
                    ]
            elif backend == MLX_LM and config.is_causal:
                export = options.cache_dir / "mlx" / f"{name}-mlx-{options.precision}"
                jobs.append(base | {"job": MLX_LM, "backend": MLX_LM, "export_dir": str(export)})
    if options.backends_given and MLX_LM in backends and len(encoders) == len(models):
        raise InputError(
            f"--backends {MLX_LM} applies to causal LMs (mlx-lm runs no encoders); {encoders[0]}: bench "
            "it with reference, torch-ane, mlx or coreml"
        )
    if ANE_TRANSFORMERS in backends:
        from ondevice.bench.peers import DISTILBERT

        why = peer_unavailable(ANE_TRANSFORMERS)
        subject = Subject(DISTILBERT, ANE_TRANSFORMERS, "CPU_AND_NE", "fp16", source="coreml-package")
        if why:
            known.append(skipped(subject, why))
        else:
            jobs.append(
                common
                | {
                    "job": ANE_TRANSFORMERS,
                    "backend": ANE_TRANSFORMERS,
                    "model": DISTILBERT,
                    "seq_lens": clip_seq_lens(seq_lens, 512),
                }
            )
    return jobs, known


def check_model(directory: Path) -> None:
    """Read the whole checkpoint (config, every tensor's name, shape and values) before anything is measured or
    written, so that a truncated or damaged model is one line up front rather than every measurement failing."""
    from convert.checkpoint import is_mlx_directory, load_checkpoint

    if is_mlx_directory(directory):
        from convert.mlx_checkpoint import load_mlx_checkpoint

        load_mlx_checkpoint(directory)
    else:
        load_checkpoint(directory)


def _check_lengths(name: str, config, options: BenchOptions) -> None:
    """Lengths the user asked for must fit the model (defaults are clipped to it instead)."""
    if not options.seq_lens_given:
        return
    from canonical.errors import InputError

    longest = max(_resolved(options)[2])
    if longest > config.max_positions:
        raise InputError(
            f"--seq-lens {longest}: longer than {name}'s {config.max_positions} positions "
            f"({config.positions_field}); choose lengths up to {config.max_positions}"
        )


def usable_cache(cache_dir: Path) -> tuple[Path, str | None]:
    """(the cache folder to use, a note when it is not the one asked for): an unwritable cache folder (a read-only
    home) falls back to a fresh temporary folder instead of failing every job that needs it."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".probe-"):
            pass
        return cache_dir, None
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="ondevice-bench-cache-"))
        return fallback, (
            f"{cache_dir}: cannot write there ({exc.strerror or exc}); generated models and packages go "
            f"to {fallback} for this run (set ONDEVICE_BENCH_CACHE to keep them)"
        )


def describe_jobs(options: BenchOptions, jobs: list[dict]) -> str:
    """One line saying what the run will measure, so that a long run says so before it starts."""
    models = ", ".join(dict.fromkeys(job["model"] for job in jobs)) or "nothing"
    lengths = ",".join(map(str, _resolved(options)[2]))
    causal = any(job.get("keystrokes") and job.get("backend") in ("torch-ane", "mlx") for job in jobs)
    keys = (
        f", {options.keystrokes:,} keystrokes replayed per predictive-text backend (--keystrokes N)" if causal else ""
    )
    hint = "" if options.quick else " (--quick for a short run)"
    return f"bench: {len(jobs)} jobs on {models}; lengths {lengths}, {options.repeats} repeats{keys}{hint}"


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
            env[var] = str(threads)
    return env


def run_isolated(job: dict, timeout_s: float, threads: int | None) -> list[dict]:
    """Run one job in a fresh interpreter; a crash or a time-out is an error record, not the end of the run."""
    subject = Subject(
        job.get("model", "-"),
        job.get("backend", job["job"]),
        job.get("compute_units") or "-",
        job.get("precision", "-"),
        job.get("compression", "none"),
    )
    with tempfile.TemporaryDirectory(prefix="ondevice-bench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "records.json"
        job_path.write_text(json.dumps(job))
        try:
            # close_fds=False lets macOS start the child with posix_spawn rather than fork + exec, so its
            # ru_maxrss starts from zero instead of from this process's (Linux reads VmHWM, reset at exec).
            done = subprocess.run(
                [sys.executable, "-m", "ondevice.bench.worker", str(job_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=_child_env(threads),
                close_fds=sys.platform != "darwin",
            )
        except subprocess.TimeoutExpired:
            return [failed(subject, TimeoutError(f"timed out after {timeout_s:.0f} s"))]
        if out_path.is_file():
            return json.loads(out_path.read_text())
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        return [failed(subject, RuntimeError(f"worker exited {done.returncode}: {lines[-1] if lines else ''}"))]


def _finish(records: list[dict], machine: dict) -> list[dict]:
    """Add to every record what it needs to be read alone, and the figures computed across records."""
    line = short_machine(machine)
    bandwidth = next((r["value"] for r in records if r["kind"] == "memory_bandwidth" and r["status"] == "ok"), None)
    reference = {
        (r["model"], r["kind"]): r["value"]
        for r in records
        if r["backend"] == "reference" and r["status"] == "ok" and r["kind"] in ("load_cold", "load_warm")
    }
    for r in records:
        r["machine"] = line
        if r["status"] != "ok":
            continue
        if r["kind"] == "decode" and r.get("weight_bytes") and bandwidth:
            r["achieved_bytes_per_s"] = r["weight_bytes"] * r["value"]
            r["bandwidth_fraction"] = r["achieved_bytes_per_s"] / bandwidth
        ref = reference.get((r["model"], r["kind"]))
        if ref and r["backend"] != "reference" and r["source"] == "checkpoint" and "vs_reference" not in r:
            # loads cannot interleave: the reference's load is its own process's, and the record says so
            r["vs_reference"] = speed_ratio(r["kind"], r["value"], ref)
            r["reference"] = {"value": ref, "same_process": False}
    return records


def check_threads(threads: int | None) -> None:
    """None leaves each library its default; 0 or fewer threads is no thread count at all."""
    if threads is not None and threads < 1:
        from canonical.errors import InputError

        raise InputError(f"--threads {threads}: must be at least 1")


def failed_models(records: list[dict]) -> dict[str, str]:
    """Models none of whose measurements succeeded while at least one failed: model -> the first failure's
    reason. `ondevice bench` exits non-zero when there is any (a skipped backend is not a failure; the
    runtime's own memory before a model loads measures no model)."""
    by_model: dict[str, list[dict]] = {}
    for r in records:
        if r.get("model", "-") != "-" and r.get("kind") not in ("runtime_baseline_memory", "memory_bandwidth"):
            by_model.setdefault(r["model"], []).append(r)
    return {
        model: next(r.get("reason") or "error" for r in rs if r["status"] == "error")
        for model, rs in by_model.items()
        if not any(r["status"] == "ok" for r in rs) and any(r["status"] == "error" for r in rs)
    }


def run_bench(options: BenchOptions, console: Console | None = None) -> Path:
    """Run the benchmark; return the output directory holding bench.json, bench.md and bench.png."""
    from ondevice.bench import report
    from ondevice.bench.bandwidth import measure_bandwidth

    console = console or Console()
    check_threads(options.threads)
    options = options.resolved()
    cache_dir, note = usable_cache(options.cache_dir)
    options = replace(options, cache_dir=cache_dir)
    if note:
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    jobs, records = plan_jobs(options)  # bad input fails here, before anything is measured or written
    console.print(describe_jobs(options, jobs), highlight=False, soft_wrap=True, markup=False)
    options.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    host = Subject("-", "machine", "cpu", "-")
    try:
        assert options.bandwidth_mib is not None  # resolved above
        bw = measure_bandwidth(options.bandwidth_mib, repeats=3 if options.quick else 5, threads=options.threads)
        records.insert(
            0,
            record(
                host,
                "memory_bandwidth",
                bw["bytes_per_s"],
                array_bytes=bw["array_bytes"],
                threads=bw["threads"],
                repeats=bw["repeats"],
                note="best of the repeats",
            ),
        )
    except Exception as exc:
        records.insert(0, failed(host, exc, kind="memory_bandwidth"))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(jobs))
        for job in jobs:
            what = " ".join(
                filter(
                    None,
                    (
                        job["model"],
                        job.get("backend") or job["job"],
                        job.get("compression"),
                        job.get("compute_units"),
                        "convert" if job["job"] == "convert" else None,
                    ),
                )
            )
            progress.update(task, description=what)
            if options.isolate:
                records += run_isolated(job, options.job_timeout_s, options.threads)
            else:
                from ondevice.bench.worker import run_job

                records += run_job(job)
            progress.advance(task)
    records = _finish(records, machine)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    report.write_json(options.out / "bench.json", machine, settings, records)
    (options.out / "bench.md").write_text(report.markdown(machine, settings, records))
    try:
        report.plot(options.out / "bench.png", records)
    except ImportError as exc:
        console.print(f"no plot: {exc} (pip install matplotlib)", style="yellow")
    report.print_tables(console, machine, settings, records)
    console.print(f"wrote {options.out / 'bench.json'}, bench.md, bench.png", highlight=False, soft_wrap=True)
    return options.out
