"""Peers measured in the same run, on the same weights and inputs: mlx-lm against our MLX model on any causal
LM whose family mlx-lm has (GPT-2, the Llama family), and Apple's `ane_transformers` DistilBERT against our
Core ML DistilBERT (Mac only).

Fairness: both sides load the same files, take the same prompt and the same number of tokens, get the
same warm-up, and their repeats alternate (ours, theirs, theirs, ours, ...) in one process so that drift
of a busy machine falls on both; the figure is the ratio of medians."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ondevice.bench.measure import interleaved, seconds
from ondevice.bench.records import Subject, failed, peer_stats, record, skipped
from ondevice.bench.runners import PROMPT_TOKENS, coreml_unavailable, device_of, parameter_count, weight_bytes

MLX_LM = "mlx_lm"
ANE_TRANSFORMERS = "ane_transformers"
ANE_UNITS = "CPU_AND_NE"
DISTILBERT = "distilbert-base-random"  # what the ane_transformers records are about


def mlx_lm_records(job: dict) -> list[dict]:
    """Both sides load our MLX export of the checkpoint (mlx-lm's own weight names and config keys), the same
    file: mlx-lm cannot read a transformers-5 `save_pretrained` GPT-2 directory, and the export is what an
    app would ship."""
    ours = Subject(job["model"], "mlx", device_of("mlx"), job["precision"], source="mlx-export")
    theirs = Subject(job["model"], MLX_LM, ours.device, job["precision"], source="mlx-export")
    try:
        import mlx_lm  # noqa: F401
    except ImportError as exc:
        return [skipped(theirs, f"mlx-lm is not installed ({exc})")]
    from convert.checkpoint import load_checkpoint
    from ondevice.bench.mlx_decode import decode_tokens_per_s, export_for_mlx_lm, mlx_lm_prefill_s, mlx_lm_tokens_per_s

    checkpoint = load_checkpoint(job["checkpoint"])
    pair = export_for_mlx_lm(checkpoint, Path(job["export_dir"]), job["precision"])
    if pair is None:
        from convert.registry import mlx_lm_of

        why = (
            "mlx-lm has no model of the family"
            if mlx_lm_of(checkpoint.config) is None
            else "mlx-lm's model of the family cannot express this checkpoint's config"
        )
        return [skipped(theirs, f"{why} ({checkpoint.config.family})")]
    lm, model, _ = pair
    ids = (
        np.random.default_rng(0)
        .integers(0, checkpoint.config.vocab_size, size=max([*job["seq_lens"], PROMPT_TOKENS]))
        .tolist()
    )

    def prefill_ours(n: int) -> float:
        lm.trim(0)
        return seconds(lambda: lm.prefill(ids[:n]))

    records = []
    cases = [("prefill", n) for n in job["seq_lens"]] + [("decode", PROMPT_TOKENS)] * (job["decode_tokens"] > 0)
    for kind, n in cases:
        try:
            # called with no arguments (the lambdas bind their loop values as defaults)
            runs: dict[str, Callable[..., float]]
            if kind == "prefill":
                runs = {"ours": lambda n=n: prefill_ours(n), "theirs": lambda n=n: mlx_lm_prefill_s(model, ids[:n])}
            else:
                prompt, tokens = ids[:PROMPT_TOKENS], job["decode_tokens"]
                runs = {
                    "ours": lambda p=prompt, t=tokens: decode_tokens_per_s(lm, p, t),
                    "theirs": lambda p=prompt, t=tokens: mlx_lm_tokens_per_s(model, p, t),
                }
            stats = interleaved(
                runs,
                job["repeats"],
                warmup=job["warmup"],
                budget_s=job.get("budget_s"),
                min_time_s=job.get("min_time_s"),
            )
            scale = 1e3 if kind == "prefill" else 1.0
            a, b = stats["ours"].scaled(scale), stats["theirs"].scaled(scale)
            extra = (
                {
                    "tokens": job["decode_tokens"],
                    "weight_bytes": weight_bytes(parameter_count(job["checkpoint"]), job["precision"]),
                }
                if kind == "decode"
                else {}
            )
            records.append(
                record(ours, kind, stats=a, seq_len=n, batch=1, vs_peer=peer_stats(MLX_LM, kind, a, b), **extra)
            )
            records.append(record(theirs, kind, stats=b, seq_len=n, batch=1, **extra))
        except Exception as exc:
            records.append(failed(theirs, exc, kind=kind, seq_len=n, batch=1))
    return records


def ane_transformers_records(job: dict) -> list[dict]:
    """Apple's reference DistilBERT (`ane_transformers.huggingface.distilbert`) under Core ML, against ours
    converted from the same random-init DistilBERT (made here with transformers, never downloaded).
    Its package pins old torch and transformers, so it installs on few set-ups: where it does not, or
    off macOS, the record says why."""
    theirs = Subject(DISTILBERT, ANE_TRANSFORMERS, ANE_UNITS, "fp16", source="coreml-package")
    why = coreml_unavailable()
    if why:
        return [skipped(theirs, why)]
    try:
        import ane_transformers  # noqa: F401
        from ane_transformers.huggingface import distilbert as ane_distilbert
    except Exception as exc:
        return [skipped(theirs, f"ane_transformers does not import here ({type(exc).__name__}: {exc})")]
    import coremltools as ct
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from ondevice.backends.coreml import load_package
    from ondevice.bench.runners import convert_package

    ours = Subject(DISTILBERT, "coreml", ANE_UNITS, "fp16", source="coreml-package")
    work = Path(job["cache_dir"])
    directory = work / DISTILBERT
    if not (directory / "config.json").is_file():
        torch.manual_seed(0)
        DistilBertForSequenceClassification(DistilBertConfig()).eval().save_pretrained(directory)
    baseline = DistilBertForSequenceClassification.from_pretrained(directory, return_dict=False, torchscript=True)
    apple = ane_distilbert.DistilBertForSequenceClassification(baseline.config).eval()
    apple.load_state_dict(baseline.state_dict())
    records = []
    for n in job["seq_lens"]:
        try:
            ids = torch.randint(1, baseline.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
            mask = torch.ones_like(ids)
            traced = torch.jit.trace(apple, (ids, mask))
            package = ct.convert(
                traced,
                convert_to="mlprogram",
                compute_units=ct.ComputeUnit[ANE_UNITS],
                inputs=[
                    ct.TensorType("input_ids", shape=(1, n), dtype=np.int32),
                    ct.TensorType("attention_mask", shape=(1, n), dtype=np.int32),
                ],
            )
            feed = {"input_ids": ids.numpy().astype(np.int32), "attention_mask": mask.numpy().astype(np.int32)}
            path = convert_package(str(directory), work / f"{DISTILBERT}-{n}.mlpackage", "none", [n], False, 512)
            encoder = load_package(path, use_coreml=True, compute_units=ANE_UNITS)
            runs: dict[str, Callable[..., float]] = {
                "ours": lambda e=encoder, f=feed: seconds(lambda: e.encode(f["input_ids"], f["attention_mask"])),
                "theirs": lambda p=package, f=feed: seconds(lambda: p.predict(f)),
            }
            stats = interleaved(
                runs,
                job["repeats"],
                warmup=job["warmup"],
                budget_s=job.get("budget_s"),
                min_time_s=job.get("min_time_s"),
            )
            a, b = stats["ours"].scaled(1e3), stats["theirs"].scaled(1e3)
            records.append(
                record(
                    ours, "encode", stats=a, seq_len=n, batch=1, vs_peer=peer_stats(ANE_TRANSFORMERS, "encode", a, b)
                )
            )
            records.append(record(theirs, "encode", stats=b, seq_len=n, batch=1))
        except Exception as exc:
            records.append(failed(theirs, exc, kind="encode", seq_len=n, batch=1))
    return records


def peer_unavailable(peer: str) -> str | None:
    """Why a peer cannot run on this machine at all, decided in the parent without starting a process."""
    if peer == ANE_TRANSFORMERS and sys.platform != "darwin":
        return "ane_transformers runs its DistilBERT through Core ML, which needs macOS"
    return None
