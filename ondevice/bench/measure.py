"""Timing and memory helpers: warm-up, repeats, median and spread, interleaving, peak RSS.

Every timing is the median of repeats after a warm-up (first calls allocate, compile kernels and fill
caches); the spread is p10-p90 of the same repeats, so a reader sees how noisy the median is."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements of one quantity (seconds, tokens/s, ...)."""

    median: float
    p10: float
    p90: float
    repeats: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        v = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)), len(v))

    def scaled(self, factor: float) -> Stats:
        """The same statistics in another unit (e.g. seconds -> milliseconds)."""
        return Stats(self.median * factor, self.p10 * factor, self.p90 * factor, self.repeats)


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_tokens_per_s(lm, prompt: list[int], tokens: int) -> float:
    """Greedy decode through the KV cache of any backend (`ondevice.runtime.CausalLM`): prefill `prompt`
    into an empty cache, then tokens/s of `tokens` single-token steps (the prompt not counted)."""
    lm.trim(0)
    token = int(np.argmax(lm.prefill(prompt)[-1]))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(lm.decode(token)))
    return tokens / (time.perf_counter() - start)


def interleaved(
    runs: dict[str, Callable[[], float]],
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_repeats: int = 3,
    min_time_s: float | None = None,
) -> dict[str, Stats]:
    """Run each measurement `warmup` times, then `repeats` rounds of all of them, alternating their order
    every round, so that drift of a noisy machine (another job, thermal state) falls on all alike.

    With `budget_s`, rounds stop early once `min_repeats` are done and the rounds have taken longer than
    that (a 512-token prefill of a 124M model on MLX's CPU backend takes a minute a round). With
    `min_time_s`, quick measurements go on past `repeats` (up to 4x) until the rounds have taken that
    long, so that a 0.3 s decode run is not summarised from a 2 s sample. Records keep the number of
    repeats actually run. Each callable returns its own measurement."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    values: dict[str, list[float]] = {name: [] for name in names}
    started, rounds = time.perf_counter(), 0
    while True:
        for name in names if rounds % 2 == 0 else reversed(names):
            values[name].append(runs[name]())
        rounds += 1
        elapsed = time.perf_counter() - started
        if budget_s is not None and rounds >= min_repeats and elapsed > budget_s:
            break
        if rounds >= repeats and (min_time_s is None or elapsed >= min_time_s or rounds >= 4 * repeats):
            break
    return {name: Stats.of(v) for name, v in values.items()}


def peak_rss_bytes() -> int:
    """High-water resident memory of this process so far.

    Linux: VmHWM of /proc/self/status, not ru_maxrss, which survives fork and exec and so would report
    the parent's peak in a child it started. macOS: ru_maxrss (bytes there; a spawned child starts anew)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # kB
        except OSError:
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
