"""One record per measurement: what was measured (kind, unit), on what (model, backend, device,
precision, compression, seq_len, batch), how often (repeats, spread) and the outcome (status). The
format is pinned by schema.json; a skipped or failed measurement is a record too, with its reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ondevice.bench.measure import Stats

SCHEMA = Path(__file__).with_name("schema.json")  # package data of ondevice.bench

KINDS = {  # kind -> unit
    "load_cold": "s",
    "load_warm": "s",
    "prefill": "ms",
    "encode": "ms",
    "decode": "tokens/s",
    "keystroke_p50": "ms",
    "keystroke_p95": "ms",
    "cache_reuse_ratio": "x",
    "peak_memory": "bytes",
    "runtime_baseline_memory": "bytes",
    "memory_bandwidth": "bytes/s",
    "coreml_convert": "s",
    "backend": None,
}


@dataclass(frozen=True)
class Subject:
    """A model on one backend variant: the fields every record of that run shares."""

    model: str
    backend: str  # reference, torch-ane, mlx, coreml, or a peer: mlx_lm, ane_transformers
    device: str  # cpu, MLX's device (Device(gpu, 0)), or Core ML compute units (CPU_AND_NE)
    precision: str  # fp32, fp16
    compression: str = "none"  # none, int8
    source: str = "checkpoint"  # what was loaded: the Hugging Face checkpoint, or an export of it

    def fields(self) -> dict:
        return {
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "compression": self.compression,
            "source": self.source,
        }


def record(
    subject: Subject,
    kind: str,
    value: float | None = None,
    *,
    stats: Stats | None = None,
    seq_len: int | None = None,
    batch: int | None = None,
    status: str = "ok",
    reason: str | None = None,
    **extra,
) -> dict:
    """A measurement; with `stats`, its value is their median and its spread their p10-p90."""
    if stats is not None:
        value = stats.median
    return {
        "kind": kind,
        "status": status,
        **subject.fields(),
        "seq_len": seq_len,
        "batch": batch,
        "value": value,
        "unit": KINDS[kind],
        "repeats": stats.repeats if stats else (0 if value is None else 1),
        "spread": {"p10": stats.p10, "p90": stats.p90} if stats else None,
        "reason": reason,
        **extra,
    }


def speed_ratio(kind: str, ours: float, theirs: float) -> float:
    """How much faster ours is than theirs (>1: faster), from the two values of the same kind: theirs /
    ours for times, ours / theirs for rates (tokens/s)."""
    return ours / theirs if KINDS[kind] == "tokens/s" else theirs / ours


def _compared(stats: Stats) -> dict:
    return {"value": stats.median, "spread": {"p10": stats.p10, "p90": stats.p90}, "repeats": stats.repeats}


def reference_fields(kind: str, ours: Stats, reference: Stats) -> dict:
    """`vs_reference` and the reference's own timing it was computed from, both measured in this process
    with their repeats interleaved: a record's ratio can always be recomputed from the record."""
    return {
        "vs_reference": speed_ratio(kind, ours.median, reference.median),
        "reference": {**_compared(reference), "same_process": True},
    }


def peer_stats(peer: str, kind: str, ours: Stats, theirs: Stats) -> dict:
    """`vs_peer`: the peer, its timing in this process (repeats interleaved with ours), and the ratio."""
    return {"peer": peer, "ratio": speed_ratio(kind, ours.median, theirs.median), **_compared(theirs)}


def skipped(subject: Subject, reason: str, kind: str = "backend", **extra) -> dict:
    return record(subject, kind, status="skipped", reason=reason, **extra)


def failed(subject: Subject, exc: BaseException, kind: str = "backend", **extra) -> dict:
    """An error record: the exception's type and first line, so one backend's failure reads in one row."""
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return record(subject, kind, status="error", reason=f"{type(exc).__name__}: {message}".rstrip(": "), **extra)


def schema() -> dict:
    return json.loads(SCHEMA.read_text())
