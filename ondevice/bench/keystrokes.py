"""Predictive text as users feel it: per-keystroke latency (p50, p95) replaying held-out text one key at
a time, and what KV-cache reuse buys at a 64-token context. The replay itself is
`ondevice.bench.keyboard`'s, which `benchmarks/keyboard_latency.py` runs too: both measure the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ondevice.bench.keyboard import replay, reuse_vs_recompute
from ondevice.bench.measure import Stats
from ondevice.bench.records import Subject, failed, record, skipped

CONTEXT_TOKENS = 64  # the engine's default context cap: the reuse ratio is measured right at it
KEYS_AFTER_CONTEXT = 24


def heldout_lines(directory: Path) -> list[str]:
    """The checkpoint's own held-out text where it ships one (the bundled keyboard-gpt2 does), else the
    bundled model's: text the model did not see, either way."""
    from bundled_models import keyboard_gpt2_path
    from ondevice.keyboard.report import read_lines

    own = Path(directory) / "heldout.txt"
    return read_lines(own if own.is_file() else Path(keyboard_gpt2_path()) / "heldout.txt")


def _lines_for(lines: list[str], keystrokes: int) -> list[str]:
    """Whole paragraphs, in order, until about `keystrokes` keys (at least one paragraph)."""
    chosen: list[str] = []
    total = 0
    for line in lines:
        if total >= keystrokes:
            break
        line = line[: keystrokes - total] if not chosen or total + len(line) <= keystrokes else line
        chosen.append(line)
        total += len(line)
    return chosen


def keystroke_records(
    subject: Subject, directory: str, backend: str, dtype: str, keystrokes: int, reuse_lines: int, threads: int | None
) -> list[dict]:
    from canonical.errors import InputError
    from ondevice.keyboard import Predictor

    try:
        predictor = Predictor(directory, backend=backend, dtype=dtype, threads=threads or 1)
    except InputError as exc:  # e.g. a random checkpoint saved without a tokenizer
        why = f"predictive text cannot run: {exc}"
        return [skipped(subject, why, kind=kind) for kind in ("keystroke_p50", "keystroke_p95", "cache_reuse_ratio")]
    lines = heldout_lines(Path(directory))
    records = []
    try:
        predictor.suggest("Warm up the model. ")
        times = replay(predictor, _lines_for(lines, keystrokes))
        spread = Stats.of(times)
        for kind, q in (("keystroke_p50", 50), ("keystroke_p95", 95)):
            records.append(
                record(
                    subject,
                    kind,
                    float(np.percentile(times, q)),
                    batch=1,
                    stats=Stats(float(np.percentile(times, q)), spread.p10, spread.p90, len(times)),
                )
            )
    except Exception as exc:
        records.append(failed(subject, exc, kind="keystroke_p50"))
    records.append(_reuse_ratio(subject, directory, backend, dtype, lines, reuse_lines, threads))
    return records


def _reuse_ratio(
    subject: Subject, directory: str, backend: str, dtype: str, lines: list[str], reuse_lines: int, threads: int | None
) -> dict:
    """recompute / reuse: mean time per keystroke typed after a 64-token context, rebuilding the whole
    context every time against keeping the KV cache as the engine does."""
    from ondevice.keyboard import Predictor

    try:
        predictor = Predictor(
            directory, backend=backend, dtype=dtype, threads=threads or 1, max_context_tokens=CONTEXT_TOKENS + 32
        )
        if predictor.context.max_tokens < CONTEXT_TOKENS + KEYS_AFTER_CONTEXT:
            return skipped(
                subject,
                f"the model's {predictor.lm.config.max_positions} positions leave no room for "
                f"{KEYS_AFTER_CONTEXT} keys after a {CONTEXT_TOKENS}-token context",
                kind="cache_reuse_ratio",
                seq_len=CONTEXT_TOKENS,
            )
        long_enough = [line for line in lines if len(predictor.tokenizer.encode(line).ids) >= CONTEXT_TOKENS + 8][
            :reuse_lines
        ]
        if not long_enough:
            return skipped(
                subject,
                f"no held-out paragraph of {CONTEXT_TOKENS + 8}+ tokens",
                kind="cache_reuse_ratio",
                seq_len=CONTEXT_TOKENS,
            )
        predictor.suggest("Warm up the model. ")
        times = reuse_vs_recompute(predictor, long_enough, CONTEXT_TOKENS, KEYS_AFTER_CONTEXT)
        reuse, recompute = float(np.mean(times.reuse)), float(np.mean(times.recompute))
        context_reuse, context_recompute = float(np.mean(times.reuse_context)), float(np.mean(times.recompute_context))
        return record(
            subject,
            "cache_reuse_ratio",
            recompute / reuse,
            seq_len=CONTEXT_TOKENS,
            batch=1,
            reuse_ms=reuse,
            recompute_ms=recompute,
            keystrokes=len(times.reuse),
            context_reuse_ms=context_reuse,
            context_recompute_ms=context_recompute,
            context_ratio=context_recompute / context_reuse,
        )
    except Exception as exc:
        return failed(subject, exc, kind="cache_reuse_ratio", seq_len=CONTEXT_TOKENS)
