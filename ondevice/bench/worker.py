"""One job of the harness, run in a fresh process so that its first load is cold and its peak memory
is its own:

    python -m ondevice.bench.worker JOB.json RECORDS.json

A job is one (model, backend variant), a peer comparison, or a Core ML conversion. Whatever fails
inside becomes an error record; the process itself exits 0 unless it could not write its records."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondevice.bench.measure import Stats, interleaved, peak_rss_bytes
from ondevice.bench.records import Subject, failed, record, reference_fields, skipped

OWN_PROCESS = "measured only when the backend runs alone in a fresh process (isolate)"


def set_threads(threads: int | None) -> None:
    """Same thread count for every library in the process (torch's intra-op pool; MLX's CPU backend
    and numpy follow the OpenMP/BLAS variables set by the parent before start)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def backend_subject(job: dict) -> Subject:
    from ondevice.bench.runners import device_of

    return Subject(
        job["model"],
        job["backend"],
        device_of(job["backend"], job.get("compute_units")),
        job["precision"],
        job.get("compression", "none"),
        "coreml-package" if job["backend"] == "coreml" else "checkpoint",
    )


def run_backend(job: dict) -> list[dict]:
    """Load cold, warm up every case, note peak memory; then load warm (repeats), and time every case in
    repeats interleaved with the transformers reference loaded in this same process, after the peak
    memory was noted: the peak is this backend's alone."""
    from convert.checkpoint import read_model_config
    from convert.locate import resolve_checkpoint
    from ondevice.bench.runners import (
        causal_cases,
        encoder_cases,
        import_backend,
        loader,
        parameter_count,
        weight_bytes,
    )

    set_threads(job["threads"])
    subject = Subject(job["model"], job["backend"], "?", job["precision"], job.get("compression", "none"))
    try:
        import_backend(job["backend"])
        subject = backend_subject(job)
    except ImportError as exc:  # a backend this machine cannot run: say so, do not fail the run
        return [skipped(subject, f"{job['backend']} cannot be imported here ({exc})")]
    except Exception as exc:
        return [failed(subject, exc)]
    isolated = job.get("isolated", True)
    records = [
        record(subject, "runtime_baseline_memory", peak_rss_bytes())
        if isolated
        else skipped(subject, OWN_PROCESS, kind="runtime_baseline_memory")
    ]
    _, config = read_model_config(resolve_checkpoint(job["checkpoint"]))
    load = loader(job["backend"], job["checkpoint"], job["precision"], job.get("package"), job.get("compute_units"))
    try:
        start = time.perf_counter()
        model = load()
        cold = time.perf_counter() - start
    except Exception as exc:
        return [*records, failed(subject, exc, kind="load_cold")]
    records.append(record(subject, "load_cold", cold))
    if config.is_causal:
        tokens = min(job["decode_tokens"], config.max_positions - 16)
        cases = causal_cases(config.vocab_size, job["seq_lens"], tokens)
    else:
        cases = encoder_cases(config.vocab_size, job["seq_lens"], job["batch"])
    working = []
    for case in cases:  # warm-up, and what the peak memory covers: the model at its longest input
        try:
            case.run(model)
            working.append(case)
        except Exception as exc:
            records.append(failed(subject, exc, kind=case.kind, seq_len=case.seq_len, batch=case.batch))
    if isolated:  # before the reference is loaded for the comparisons: nothing here but this backend
        records.append(
            record(
                subject,
                "peak_memory",
                peak_rss_bytes(),
                note="max RSS of this process: includes "
                "the runtime baseline (Python and libraries imported) measured before loading",
            )
        )
    else:
        records.append(skipped(subject, OWN_PROCESS, kind="peak_memory"))
    warm = []
    try:
        for _ in range(job["repeats"]):  # the second and later loads: files in the page cache, libraries warm
            model = None
            gc.collect()
            start = time.perf_counter()
            model = load()
            warm.append(time.perf_counter() - start)
    except Exception as exc:
        return [*records, failed(subject, exc, kind="load_warm")]
    records.append(record(subject, "load_warm", stats=Stats.of(warm)))

    reference = None
    if job["backend"] != "reference" and job["compare_reference"]:
        try:
            reference = loader("reference", job["checkpoint"], "fp32")()
        except Exception as exc:
            records.append(failed(Subject(job["model"], "reference", "cpu", "fp32"), exc, kind="load_cold"))
    precision = "int8" if job.get("compression") == "int8" else job["precision"]
    for case in working:
        try:
            runs: dict[str, Callable[..., float]] = {"ours": lambda c=case: c.run(model)}
            if reference is not None:
                runs["reference"] = lambda c=case: c.run(reference)
            stats = interleaved(
                runs,
                job["repeats"],
                warmup=job["warmup"],
                budget_s=job.get("budget_s"),
                min_time_s=job.get("min_time_s"),
            )
            scale = 1.0 if case.kind == "decode" else 1e3  # seconds -> ms for latencies
            ours = stats["ours"].scaled(scale)
            extra: dict[str, Any] = {}
            if reference is not None:
                extra |= reference_fields(case.kind, ours, stats["reference"].scaled(scale))
            if case.kind == "decode":  # parameters from the checkpoint's file headers: no second load
                extra |= {"tokens": tokens, "weight_bytes": weight_bytes(parameter_count(job["checkpoint"]), precision)}
            records.append(record(subject, case.kind, stats=ours, seq_len=case.seq_len, batch=case.batch, **extra))
        except Exception as exc:
            records.append(failed(subject, exc, kind=case.kind, seq_len=case.seq_len, batch=case.batch))
    reference = None  # free it before predictive text loads its own models
    if config.is_causal and job["backend"] in ("torch-ane", "mlx") and job["keystrokes"] > 0:
        from ondevice.bench.keystrokes import keystroke_records

        model = None
        gc.collect()
        records += keystroke_records(
            subject,
            job["checkpoint"],
            job["backend"],
            job["precision"],
            job["keystrokes"],
            job["reuse_lines"],
            job["threads"],
        )
    return records


def run_convert(job: dict) -> list[dict]:
    from convert.checkpoint import read_model_config
    from convert.locate import resolve_checkpoint
    from ondevice.bench.runners import convert_package

    subject = Subject(job["model"], "coreml", "conversion", "fp16", job["compression"], "checkpoint")
    try:
        _, config = read_model_config(resolve_checkpoint(job["checkpoint"]))
        start = time.perf_counter()
        convert_package(
            job["checkpoint"],
            Path(job["package"]),
            job["compression"],
            job["seq_lens"],
            config.is_causal,
            config.max_positions,
        )
        return [record(subject, "coreml_convert", time.perf_counter() - start)]
    except Exception as exc:
        return [failed(subject, exc, kind="coreml_convert")]


def run_job(job: dict) -> list[dict]:
    from ondevice.bench import peers

    runners = {
        "backend": run_backend,
        "convert": run_convert,
        "mlx_lm": peers.mlx_lm_records,
        "ane_transformers": peers.ane_transformers_records,
    }
    try:
        return runners[job["job"]](job)
    except Exception as exc:  # a bug or a broken set-up: still one record, never a crash of the run
        backend = job.get("backend") or job["job"]
        return [failed(Subject(job.get("model", "-"), backend, "-", job.get("precision", "-")), exc)]


def main() -> None:
    job_path, out_path = sys.argv[1], sys.argv[2]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    job = json.loads(Path(job_path).read_text())
    Path(out_path).write_text(json.dumps(run_job(job)))


if __name__ == "__main__":
    main()
