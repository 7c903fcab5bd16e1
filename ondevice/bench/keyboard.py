"""Predictive text timed as users feel it, for `ondevice bench` and `benchmarks/keyboard_latency.py`:

- `replay`: held-out text typed one key at a time (every prefix of every paragraph) through one
  Predictor, the time of each keystroke's suggestions;
- `reuse_vs_recompute`: keys typed after a long context, keeping the KV cache as the engine does or
  rebuilding the whole context on every keystroke, for the whole keystroke and for its context part
  alone (`ContextCache.last_root_seconds`, the time the Predictor spends bringing the model's state up
  to the text before the word being typed)."""

from __future__ import annotations

import time
from typing import NamedTuple


def keystroke_ms(predictor, text: str, reset: bool = False) -> float:
    """Milliseconds of one `suggest(text)`; with `reset`, from an empty cache."""
    if reset:
        predictor.reset()
    started = time.perf_counter()
    predictor.suggest(text)
    return (time.perf_counter() - started) * 1e3


def replay(predictor, lines: list[str]) -> list[float]:
    """Milliseconds per keystroke, typing every line one key at a time from an empty cache."""
    times = []
    for line in lines:
        predictor.reset()
        times += [keystroke_ms(predictor, line[:i]) for i in range(1, len(line) + 1)]
    return times


class ReuseTimes(NamedTuple):
    """Milliseconds per keystroke, whole (suggestions) and the context part alone (bringing the model's
    state up to the text before the word being typed), reusing the cache or recomputing it."""

    reuse: list[float]
    recompute: list[float]
    reuse_context: list[float]
    recompute_context: list[float]


def _keystroke(predictor, text: str, reset: bool) -> tuple[float, float]:
    """(whole keystroke, its context part) in ms: one `suggest`, and the time the Predictor's context
    cache reports for bringing the context up to date during it."""
    whole = keystroke_ms(predictor, text, reset)
    return whole, predictor.context.last_root_seconds * 1e3


def reuse_vs_recompute(predictor, lines: list[str], context_tokens: int = 64, keys: int = 24) -> ReuseTimes:
    """Type `keys` keys after the first `context_tokens` tokens of each line long enough, reusing the
    cache, then again recomputing the context on every keystroke."""
    times = ReuseTimes([], [], [], [])
    for line in lines:
        ids = predictor.tokenizer.encode(line)
        if len(ids.ids) < context_tokens + 8:
            continue
        start = ids.offsets[context_tokens][0]  # character where the token after the context begins
        prefix, typed = line[:start], line[start : start + keys]
        predictor.reset()
        predictor.suggest(prefix)
        for i in range(1, len(typed) + 1):
            whole, context = _keystroke(predictor, prefix + typed[:i], reset=False)
            times.reuse.append(whole)
            times.reuse_context.append(context)
        for i in range(1, len(typed) + 1):
            whole, context = _keystroke(predictor, prefix + typed[:i], reset=True)
            times.recompute.append(whole)
            times.recompute_context.append(context)
    return times
