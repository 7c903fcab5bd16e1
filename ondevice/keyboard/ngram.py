"""The baseline every figure is compared with: a word n-gram model with stupid backoff
(Brants et al., 2007), built from the same training text as the neural model."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from ondevice.keyboard.beam import Suggestion
from ondevice.keyboard.words import WORD, split_partial

_TOKENS = re.compile(rf"{WORD.pattern}|\d+|[^\w\s]")
_START = "<s>"


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(text)


class NGramModel:
    def __init__(self, order: int = 3, backoff: float = 0.4):
        self.order, self.backoff = order, backoff
        self.next_counts: dict[tuple[str, ...], Counter] = defaultdict(Counter)
        self.by_frequency: list[str] = []  # real words, most frequent first (the unigram level)
        self.unigrams: Counter = Counter()

    @classmethod
    def train(cls, lines: Iterable[str], order: int = 3) -> NGramModel:
        model = cls(order)
        for line in lines:
            history = [_START] * (order - 1) + tokens(line)
            for i in range(order - 1, len(history)):
                word = history[i]
                if not WORD.fullmatch(word):
                    continue
                model.unigrams[word] += 1
                for n in range(1, order):
                    model.next_counts[tuple(history[i - n : i])][word] += 1
        model.by_frequency = [w for w, _ in model.unigrams.most_common()]
        return model

    def suggest(self, text: str, k: int = 3) -> list[Suggestion]:
        context, partial, _ = split_partial(text)
        history = ([_START] * (self.order - 1) + tokens(context))[-(self.order - 1) :]
        prefix = partial.lower()
        scores: dict[str, tuple[float, str]] = {}
        weight = 1.0
        for n in range(self.order - 1, 0, -1):
            counts = self.next_counts.get(tuple(history[-n:]))
            if counts:
                total = sum(counts.values())
                for word, count in counts.most_common():
                    if word.lower().startswith(prefix):
                        self._add(scores, word, weight * count / total)
            if len(scores) >= k:
                break
            weight *= self.backoff
        if len(scores) < k:
            total = sum(self.unigrams.values()) or 1
            for word in self.by_frequency:
                if word.lower().startswith(prefix):
                    self._add(scores, word, weight * self.unigrams[word] / total)
                    if len(scores) >= k:
                        break
        ranked = sorted(scores.values(), reverse=True)[:k]
        if partial[:1].isupper():
            return [Suggestion(w[:1].upper() + w[1:], s) for s, w in ranked]
        return [Suggestion(w, s) for s, w in ranked]

    def known_next(self, context: str, prefix: str, n: int) -> dict[str, float]:
        """The `n` words most often seen after the last two words of `context` (else after the last one) that
        start with `prefix`, with their relative frequency there (lower-case words); {} where neither
        context was seen with such a word: the blend's "where it knows the context"."""
        history = ([_START] * (self.order - 1) + tokens(context))[-(self.order - 1) :]
        for order in range(self.order - 1, 0, -1):
            ranked = self._ranked(tuple(history[-order:]))
            if not ranked:
                continue
            total = ranked[0]
            found: dict[str, float] = {}
            for word, count in ranked[1]:
                key = word.lower()
                if key.startswith(prefix):
                    found[key] = found.get(key, 0.0) + count / total
                    if len(found) >= n:
                        break
            if found:
                return found
        return {}

    def _ranked(self, history: tuple[str, ...]):
        """(total, [(word, count), most frequent first]) after `history`, memoised; None where unseen."""
        cache = self.__dict__.setdefault("_ranked_cache", {})
        if history not in cache:
            counts = self.next_counts.get(history)
            cache[history] = (sum(counts.values()), counts.most_common()) if counts else None
        return cache[history]

    @staticmethod
    def _add(scores: dict[str, tuple[float, str]], word: str, score: float) -> None:
        key = word.lower()
        if key not in scores or score > scores[key][0]:
            scores[key] = (score, word)
