"""Predictive-text quality as a user feels it, replaying held-out text.

- next-word Acc@1 / Acc@3: before each word is typed, is it the first / among the top 3 suggestions?
- completion Acc@3 after 1, 2, 3 typed letters (words longer than that many letters);
- KSR@3, keystroke savings: 1 - (keys typed + keys to pick a suggestion) / keys without prediction. A
  pick costs one key and inserts the word and the space after it; a phrase suggestion (`phrases.py`) that the
  text goes on with is picked the same way, one key for all its words (preferred over its first word alone
  when both are shown), and the words it inserted cost nothing more. The word-level figures (Acc@k,
  completion) are still measured at every word, phrase-inserted or not;
- per-keystroke latency p50 / p95 over the calls made while replaying.
Words are matched exactly (case included)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from ondevice.keyboard.beam import Suggestion
from ondevice.keyboard.words import WORD

SuggestFn = Callable[[str], list[Suggestion]]


@dataclass
class EvalReport:
    name: str
    words: int = 0
    next_hits: list[int] = field(default_factory=lambda: [0, 0, 0])  # hits at rank <= 1, 2, 3
    completion_hits: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    completion_words: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    keys_without: int = 0
    keys_with: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    phrase_picks: int = 0  # phrases picked (KSR) and the words they inserted
    phrase_words: int = 0

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms or [0.0])
        out = {
            "words": self.words,
            "next_word_acc1": self.next_hits[0] / max(1, self.words),
            "next_word_acc3": self.next_hits[2] / max(1, self.words),
            "ksr3": 1 - self.keys_with / max(1, self.keys_without),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "phrase_picks": self.phrase_picks,
            "phrase_words": self.phrase_words,
        }
        for n in (1, 2, 3):
            out[f"completion_acc3_after_{n}"] = self.completion_hits[n] / max(1, self.completion_words[n])
        return out

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("latencies_ms")
        return {"name": self.name, **self.summary(), "counts": data}


def evaluate(
    name: str, suggest: SuggestFn, lines: Iterable[str], k: int = 3, learn: Callable[[str], None] | None = None
) -> EvalReport:
    """Replay `lines`; with `learn`, each line is learned once it has been typed (adaptive figures)."""
    report = EvalReport(name)
    for line in lines:
        _replay_line(report, suggest, line, k)
        if learn is not None:
            learn(line)
    return report


def _timed(report: EvalReport, suggest: SuggestFn, text: str) -> list[str]:
    started = time.perf_counter()
    words = [s.word for s in suggest(text)]
    report.latencies_ms.append((time.perf_counter() - started) * 1e3)
    return words


def _phrase_in(shown: list[str], line: str, start: int) -> str | None:
    """The longest phrase among `shown` that the line goes on with from `start`, up to a word's end."""
    fits = [
        s
        for s in shown
        if " " in s and line.startswith(s, start) and not line[start + len(s) : start + len(s) + 1].isalnum()
    ]
    return max(fits, key=len, default=None)


def _replay_line(report: EvalReport, suggest: SuggestFn, line: str, k: int) -> None:
    report.keys_without += len(line)
    typed_to = 0  # characters of the line already accounted for in keys_with (typed, picked or phrase-inserted)
    for match in WORD.finditer(line):
        word, start = match.group(0), match.start()
        inserted = match.end() <= typed_to  # by a phrase picked earlier: no keys, but still measured
        report.keys_with += max(0, start - typed_to)  # separators are typed as they are
        report.words += 1
        picked_at: int | None = 0 if inserted else None
        phrase: str | None = None
        for typed in range(0, len(word)):
            if picked_at is not None and typed > 3:
                break
            shown = _timed(report, suggest, line[: start + typed])[:k]
            if typed == 0:
                for rank in range(3):
                    report.next_hits[rank] += word in shown[: rank + 1]
            elif typed <= 3:
                report.completion_words[typed] += 1
                report.completion_hits[typed] += word in shown
            if picked_at is None:
                phrase = _phrase_in(shown, line, start)
                if phrase is not None or word in shown:
                    picked_at = typed
        if inserted:
            continue
        end = match.end()
        if picked_at is None:
            report.keys_with += len(word)
        else:
            report.keys_with += picked_at + 1
            if phrase is not None:
                end = start + len(phrase)
                report.phrase_picks += 1
                report.phrase_words += phrase.count(" ")
            if line[end : end + 1] == " ":  # the pick inserted the space too
                end += 1
        typed_to = end
    report.keys_with += len(line) - typed_to
