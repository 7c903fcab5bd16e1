"""Top-k whole words after a context, by beam search over subword tokens.

A word's probability is that of its tokens times the probability that the word ends there (the next
token is not a continuation), summed over every tokenization that spells it. Beams are expanded one
token depth at a time in one batched call. With a beam width, at most that many beams survive a
depth, and a beam whose probability is already below the k-th word found is dropped (it cannot
become a new top-k word, though it may have been a rarer spelling of one). With `beam_width=None`
every spelling of up to `max_tokens` tokens is scored: exact, for verification on small models.

With `words` (a `lexicon.WordSet`), the search only expands a beam whose letters some word of the index starts
with, and only finds words of the index: the index is consulted as the search expands, so the beam width is
spent on real words and the top k are k real words. Exact again with `beam_width=None`: every spelling of an
index word, and nothing else."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ondevice.keyboard.words import TokenClasses


@dataclass(frozen=True)
class Suggestion:
    word: str
    probability: float


@dataclass
class _Beam:
    logp: float
    tokens: tuple[int, ...]
    text: str  # the word so far, without its leading space


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(values: np.ndarray) -> float:
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def search_words(
    root_logprobs: np.ndarray,
    expand: Callable[[Sequence[Sequence[int]]], np.ndarray],
    classes: TokenClasses,
    partial: str = "",
    bare_start: bool = False,
    k: int = 3,
    beam_width: int | None = 8,
    max_tokens: int = 4,
    words=None,
    also: Sequence[Sequence[int]] = (),
) -> list[Suggestion]:
    """root_logprobs: log-probabilities (V,) of the token after the context; expand(sequences) returns
    logits (N, V) after each equally long continuation. `partial` constrains words to start with it
    (case-insensitively); `beam_width=None` enumerates every word of up to `max_tokens` tokens (exact).
    `also`: token sequences to expand alongside, depth by depth, in the same batches (the spellings that
    `score_spellings` will score next: with a memoising `expand` they then cost no forward of their own); they
    change nothing that is found."""
    boundary = ~classes.continues_word
    found: dict[str, list] = {}  # lower-case word -> [total probability, best spelling, its probability]
    frontier, logprobs = [_Beam(0.0, (), "")], root_logprobs[None, :]

    def kth_best() -> float:
        if len(found) < k:
            return -math.inf
        return math.log(sorted((v[0] for v in found.values()), reverse=True)[k - 1])

    for depth in range(max_tokens + 1):
        children: list[_Beam] = []
        for beam, lp in zip(frontier, logprobs, strict=True):
            if beam.text and len(beam.text) >= len(partial) and (words is None or beam.text.lower() in words):
                p = math.exp(beam.logp + _logsumexp(lp[boundary]))
                entry = found.setdefault(beam.text.lower(), [0.0, beam.text, 0.0])
                entry[0] += p
                if p > entry[2]:
                    entry[1:] = [beam.text, p]
            if depth == max_tokens:
                continue
            children += _expand_beam(beam, lp, classes, partial, bare_start, beam_width, words)
        if beam_width is not None:
            floor = kth_best()
            children = [c for c in children if c.logp > floor]  # extending a beam only lowers its probability
            children = sorted(children, key=lambda c: c.logp, reverse=True)[:beam_width]
        if not children:
            break
        rows = [c.tokens for c in children]
        extra = {tuple(t[: depth + 1]) for t in also if len(t) > depth} - set(rows)
        frontier, logprobs = children, log_softmax(expand(rows + sorted(extra))[: len(rows)])

    ranked = sorted(found.values(), key=lambda v: v[0], reverse=True)[:k]
    return [Suggestion(spelling, total) for total, spelling, _ in ranked]


def score_spellings(
    root_logprobs: np.ndarray,
    expand: Callable[[Sequence[Sequence[int]]], np.ndarray],
    classes: TokenClasses,
    spellings: Mapping[str, Sequence[int]],
) -> dict[str, float]:
    """The probability of each word's one given spelling (word -> its token ids): the tokens' probabilities times
    that the word ends after them, scored like the search's words (one batched `expand` per token depth, the
    expansions the search already made reused). For words the search did not reach: longer than its
    `max_tokens`, or pruned by its beam."""
    boundary = ~classes.continues_word
    logp = {word: 0.0 for word in spellings}
    longest = max((len(t) for t in spellings.values()), default=0)
    for depth in range(longest + 1):
        here = [(w, t) for w, t in spellings.items() if len(t) >= depth]
        if depth == 0:
            rows = np.repeat(root_logprobs[None, :], len(here), axis=0)
        else:
            rows = log_softmax(expand([tuple(t[:depth]) for _, t in here]))
        for (word, tokens), lp in zip(here, rows, strict=True):
            logp[word] += float(lp[tokens[depth]]) if depth < len(tokens) else _logsumexp(lp[boundary])
    return {word: math.exp(v) for word, v in logp.items()}


def _expand_beam(
    beam: _Beam,
    lp: np.ndarray,
    classes: TokenClasses,
    partial: str,
    bare_start: bool,
    beam_width: int | None,
    words=None,
) -> list[_Beam]:
    if beam.text:
        kind, mask, remaining = "continue", classes.continues_word, partial[len(beam.text) :]
    elif bare_start:
        kind, mask, remaining = "bare", classes.starts_bare, partial
    else:
        kind, mask, remaining = "start", classes.starts_word, " " + partial if partial else ""
    # Constrained by typed letters: only tokens that agree with them; otherwise every token of the kind.
    candidates = np.asarray(classes.compatible(kind, remaining), dtype=np.int64) if remaining else np.flatnonzero(mask)
    strip = 0 if beam.text or bare_start else 1  # a spaced word-start token carries the word's leading space
    if words is not None and len(candidates):
        candidates = _in_words(beam, lp, candidates, classes, kind, words, beam_width)
    elif beam_width is not None and len(candidates) > beam_width:
        candidates = candidates[np.argpartition(lp[candidates], -beam_width)[-beam_width:]]
    return [
        _Beam(beam.logp + float(lp[t]), (*beam.tokens, int(t)), beam.text + classes.strings[t][strip:])
        for t in candidates
    ]


def _in_words(
    beam: _Beam, lp: np.ndarray, candidates: np.ndarray, classes: TokenClasses, kind: str, words, beam_width: int | None
) -> np.ndarray:
    """The candidates after which some word of `words` can still be spelled: for a word's first token, one
    precomputed mask; for a continuation, the index is asked about the most probable candidates first, until
    `beam_width` of them agree (all of them when exact)."""
    if not beam.text:
        candidates = candidates[words.start_mask(classes, kind)[candidates]]
        if beam_width is not None and len(candidates) > beam_width:
            candidates = candidates[np.argpartition(lp[candidates], -beam_width)[-beam_width:]]
        return candidates
    prefix = beam.text.lower()
    allowed = words.continuations(classes, prefix)
    if allowed is not None:  # few words go on from here: the tokens they allow, read off the words
        mask = np.zeros(len(classes.strings), dtype=bool)
        mask[allowed] = True
        candidates = candidates[mask[candidates]]
        if beam_width is not None and len(candidates) > beam_width:
            candidates = candidates[np.argpartition(lp[candidates], -beam_width)[-beam_width:]]
        return candidates
    if beam_width is None:
        return np.asarray(
            [t for t in candidates if words.has_prefix(prefix + classes.strings[t].lower())], dtype=np.int64
        )
    kept: list[int] = []  # many words go on: ask about the most probable tokens first
    for t in candidates[np.argsort(-lp[candidates], kind="stable")]:
        if words.has_prefix(prefix + classes.strings[t].lower()):
            kept.append(int(t))
            if len(kept) == beam_width:
                break
    return np.asarray(kept, dtype=np.int64)
