"""Keystroke-by-keystroke reuse of a causal LM's KV cache.

Each keystroke re-tokenizes the context, keeps the cached tokens that still agree with it (the
longest common prefix) and runs the model only on what is new; typing inside a word leaves the
context unchanged, so it costs no model call for the context. Backspace and edits rewind the cache to
the point where the text diverges.

The word search's continuations of the context (`expand`) are remembered until the context changes:
each keystroke inside a word re-visits most of the previous keystroke's beams. When the context then
grows by exactly one of them (the space after a word the search had scored), a backend that kept that
branch's keys and values (`adopt_branch`) takes them into its cache instead of running the model.

Context policy: at most `max_tokens` tokens. When the context grows past that, it is cut back to the
most recent half (whole tokens, at cut points fixed by the token count), so the cache is rebuilt once
every `max_tokens / 2` tokens rather than on every keystroke. Text before the cut is never seen; a
text that starts within the window is preceded by the end-of-text token the model was trained with."""

from __future__ import annotations

import time

import numpy as np

from ondevice.keyboard.beam import log_softmax
from ondevice.runtime import CausalLM, adopt_branch, branch_logits

# Characters of context tokenized per token kept: generous, so that the window holds max_tokens tokens.
_CHARS_PER_TOKEN = 12
# Continuations remembered for one context, at most: ~130 MB of fp32 logits at an 8k vocabulary.
_MAX_EXPANSIONS = 4096


class ContextCache:
    def __init__(self, lm: CausalLM, tokenizer, start_token: int, max_tokens: int):
        self.lm, self.tokenizer, self.start_token, self.max_tokens = lm, tokenizer, start_token, max_tokens
        self.ids: list[int] = []
        self.root: np.ndarray | None = None
        self.tokens_computed = 0  # how many context tokens the model has run on: the cost reuse saves
        self.tokens_adopted = 0  # how many it took from branches the word search had scored instead
        self._expansions: dict[tuple[int, ...], np.ndarray] = {}  # continuation -> logits after it
        # Wall time (s) of the last `root_logprobs`, the context part of a keystroke: read by benchmarks.
        self.last_root_seconds: float | None = None

    def token_ids(self, context: str) -> list[int]:
        window = self.max_tokens * _CHARS_PER_TOKEN
        from_start = len(context) <= window
        if not from_start:
            # A char window whose start moves in fixed steps keeps the tokenization stable between keystrokes.
            step = window // 2
            start = ((len(context) - window) // step + 1) * step
            space = context.find(" ", start)
            context = context[space + 1 if space >= 0 else start :]
        # The start token is ours to add: a tokenizer's own template (Llama's "<s>") would add a second one.
        encoded = self.tokenizer.encode(context, add_special_tokens=False).ids if context else []
        ids = ([self.start_token] if from_start else []) + encoded
        if len(ids) > self.max_tokens:
            half = self.max_tokens // 2
            cut = ((len(ids) - self.max_tokens) // half + 1) * half
            ids = ids[cut:]
        return ids or [self.start_token]

    def root_logprobs(self, context: str) -> np.ndarray:
        """Log-probabilities of the token after `context`, running the model only on new tokens."""
        started = time.perf_counter()
        ids = self.token_ids(context)
        common = 0
        for a, b in zip(self.ids, ids, strict=False):
            if a != b:
                break
            common += 1
        if common == len(ids) == len(self.ids) and self.root is not None:
            self.last_root_seconds = time.perf_counter() - started
            return self.root
        new = tuple(ids[common:])
        if common == len(self.ids) and new in self._expansions and adopt_branch(self.lm, new):
            logits = self._expansions[new]
            self.tokens_adopted += len(new)
        else:
            common = min(common, len(ids) - 1)  # the last token must run to give the next token's logits
            self.lm.trim(common)
            logits = self.lm.prefill(ids[common:])[-1]
            self.tokens_computed += len(ids) - common
        self.ids, self.root = ids, log_softmax(logits.astype(np.float64))
        self._expansions.clear()
        self.last_root_seconds = time.perf_counter() - started
        return self.root

    def expand(self, sequences) -> np.ndarray:
        """Logits (N, V) after each continuation of the current context, running the model (in one batch:
        within one search depth they have equal length) only on those not seen since the context changed."""
        missing = [tuple(s) for s in sequences if tuple(s) not in self._expansions]
        if missing:
            if len(self._expansions) > _MAX_EXPANSIONS:
                self._expansions.clear()
            self._expansions.update(zip(missing, branch_logits(self.lm, missing), strict=True))
        return np.stack([self._expansions[tuple(s)] for s in sequences])

    def reset(self) -> None:
        self.lm.trim(0)
        self.ids, self.root = [], None
        self._expansions.clear()
