"""What a "word" is for the keyboard, and how each subword token relates to words.

A word is a run of letters, with inner apostrophes ("don't", "it’s"). Byte-level BPE tokens (GPT-2
style) fall into three kinds: a token that starts a word (" quick", or "Quick" at the very start of
a text), a token that continues one ("ly", "'s"), and everything else (spaces, punctuation, digits,
partial UTF-8 bytes, special tokens), which ends the word before it."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_APOSTROPHES = "'’"


def _wordlike(text: str) -> bool:
    return bool(text) and all(c.isalpha() or c in _APOSTROPHES for c in text) and any(c.isalpha() for c in text)


# A word glued to one of these starts without a space: "(see", "\"Hello".
OPENERS = "([{\"'“‘«/-"


def split_partial(text: str) -> tuple[str, str, bool]:
    """Split typed text into (context, partial word being typed, whether the word starts bare).

    "The quick bro" -> ("The quick", "bro", False): the word's first token carries its leading space,
    so the context drops trailing whitespace (token healing backs up to the token boundary before the
    partial word). "(se" -> ("(", "se", True) and "" -> ("", "", True): the word starts without a
    space, at the start of the text or glued to an opening bracket or quote."""
    match = re.search(r"[^\W\d_]+(?:['’][^\W\d_]*)*$", text)
    partial = match.group(0) if match else ""
    if partial and match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] == "_"):
        partial = ""  # letters glued to digits ("3rd") are not a word we complete
    before = text[: len(text) - len(partial)]
    context = before.rstrip()
    bare = not context or (before == context and context[-1] in OPENERS)
    return context, partial, bare


@dataclass
class TokenClasses:
    """Per-token word roles for one vocabulary, with sorted indexes for prefix look-ups."""

    strings: list[str]  # decoded text of each token
    starts_word: np.ndarray  # bool (V,): " word" tokens
    starts_bare: np.ndarray  # bool (V,): "Word" tokens, for a word with no space before it
    continues_word: np.ndarray  # bool (V,): letters with no leading space
    _sorted: dict[str, tuple[list[str], list[int]]]

    @classmethod
    def from_strings(cls, strings: list[str], special_ids: set[int]) -> TokenClasses:
        n = len(strings)
        starts = np.zeros(n, dtype=bool)
        starts_bare = np.zeros(n, dtype=bool)
        continues = np.zeros(n, dtype=bool)
        for i, s in enumerate(strings):
            if i in special_ids or "\ufffd" in s:
                continue
            if s.startswith(" ") and _wordlike(s[1:]) and s[1].isalpha():
                starts[i] = True
            elif _wordlike(s):
                continues[i] = True
                starts_bare[i] = s[0].isalpha()
        index = {}
        for name, mask in (("start", starts), ("bare", starts_bare), ("continue", continues)):
            pairs = sorted((strings[i].lower(), i) for i in np.flatnonzero(mask))
            index[name] = ([p[0] for p in pairs], [p[1] for p in pairs])
        return cls(strings, starts, starts_bare, continues, index)

    def compatible(self, kind: str, remaining: str) -> list[int]:
        """Token ids of `kind` ("start", "bare", "continue") whose text agrees with `remaining`, the rest of
        the typed prefix not yet covered (case-insensitive): the token either extends past it or is a
        prefix of it."""
        keys, ids = self._sorted[kind]
        remaining = remaining.lower()
        lo = bisect.bisect_left(keys, remaining)
        hi = bisect.bisect_left(keys, remaining + "\U0010ffff")
        found = ids[lo:hi]  # tokens that start with all of `remaining`
        for cut in range(1, len(remaining)):  # tokens equal to a proper prefix of `remaining`
            j = bisect.bisect_left(keys, remaining[:cut])
            while j < len(keys) and keys[j] == remaining[:cut]:
                found.append(ids[j])
                j += 1
        return found


def is_real_word(word: str) -> bool:
    return WORD.fullmatch(word) is not None
