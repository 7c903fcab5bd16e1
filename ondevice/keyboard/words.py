"""What a "word" is for the keyboard, and how each subword token relates to words.

A word is a run of letters, with inner apostrophes ("don't", "it’s"). Where words begin in a vocabulary
is read off the tokenizer itself, in one place (`WordStarts`): a byte-level BPE (GPT-2, Llama 3, Qwen,
SmolLM2) writes the space before a word as "Ġ" (byte 0x20 in its byte alphabet), a SentencePiece-style
vocabulary (Llama 2, Mistral; BPE or Unigram) as "▁", with "<0xNN>" byte-fallback tokens for what it
cannot spell. Either way every token reads as a piece of text (`WordStarts.token_text`), and falls into
one of three kinds: a token that starts a word (" quick", or "Quick" where a word starts with no space
before it), a token that continues one ("ly", "'s"), and everything else (spaces, punctuation, digits,
partial UTF-8 bytes, special tokens), which ends the word before it."""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass

import numpy as np

from canonical.errors import InputError

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
    if (
        match
        and partial
        and match.start() > 0
        and (text[match.start() - 1].isalnum() or text[match.start() - 1] == "_")
    ):
        partial = ""  # letters glued to digits ("3rd") are not a word we complete
    before = text[: len(text) - len(partial)]
    context = before.rstrip()
    bare = not context or (before == context and context[-1] in OPENERS)
    return context, partial, bare


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = _byte_alphabet()


@dataclass(frozen=True)
class WordStarts:
    """Where words begin in one tokenizer's vocabulary: the one description the keyboard's word logic reads.

    style: "byte-level" (a word's leading space is the byte-level "Ġ") or "metaspace" (it is `marker`, "▁");
    space_at_start: the tokenizer writes a text's first word with that space too (SentencePiece's prefix
    space, `add_prefix_space`), so a word at the start of a text begins with a spaced token, not a bare one;
    byte_fallback: "<0xNN>" tokens spell, byte by byte, what the vocabulary has no piece for."""

    style: str
    marker: str
    space_at_start: bool
    byte_fallback: bool

    @classmethod
    def of(cls, tokenizer) -> WordStarts:
        """Read from a `tokenizers.Tokenizer`'s own pipeline (normalizer, pre-tokenizer, decoder, model)."""
        spec = json.loads(tokenizer.to_str())
        parts = [part for key in ("normalizer", "pre_tokenizer", "decoder") for part in _flatten(spec.get(key))]
        model = spec.get("model") or {}
        byte_fallback = bool(model.get("byte_fallback")) or any(p.get("type") == "ByteFallback" for p in parts)
        byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
        if byte_level:
            pre = [p for p in _flatten(spec.get("pre_tokenizer")) if p.get("type") == "ByteLevel"]
            return cls("byte-level", "Ġ", bool(pre and pre[0].get("add_prefix_space")), byte_fallback)
        metaspace = [p for p in parts if p.get("type") == "Metaspace"]
        if metaspace:
            first = metaspace[0]
            scheme = first.get("prepend_scheme") or ("always" if first.get("add_prefix_space", True) else "never")
            return cls("metaspace", first.get("replacement", "▁"), scheme != "never", byte_fallback)
        # The legacy SentencePiece pipeline: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer.
        normalizer = list(_flatten(spec.get("normalizer")))
        replaced = [
            p["content"]
            for p in normalizer
            if p.get("type") == "Replace" and (p.get("pattern") or {}).get("String") == " " and p.get("content")
        ]
        if replaced:
            prepended = any(p.get("type") == "Prepend" and p.get("prepend") == replaced[0] for p in normalizer)
            return cls("metaspace", replaced[0], prepended, byte_fallback)
        raise InputError(
            "the tokenizer marks word starts neither byte-level (GPT-2, Llama 3, Qwen) nor "
            "SentencePiece-style ('▁', Llama 2, Mistral): predictive text cannot tell where words begin"
        )

    def token_text(self, piece: str) -> str:
        """A vocabulary piece as it reads inside a text: " quick" for "Ġquick" or "▁quick", "A" for the
        byte-fallback token "<0x41>"; "\ufffd" where the piece is (or holds) an incomplete UTF-8 sequence."""
        if self.style == "byte-level":
            if any(c not in _BYTE_LEVEL for c in piece):
                return piece  # an added token kept as written
            return bytes(_BYTE_LEVEL[c] for c in piece).decode("utf-8", errors="replace")
        byte = _BYTE_TOKEN.fullmatch(piece) if self.byte_fallback else None
        if byte:
            value = int(byte.group(1), 16)
            return chr(value) if value < 0x80 else "\ufffd"  # one byte of a multi-byte character
        return piece.replace(self.marker, " ")


def _flatten(part) -> list[dict]:
    """A tokenizer.json component and, for a Sequence, the components inside it, in order."""
    if not isinstance(part, dict):
        return []
    inner = part.get("normalizers") or part.get("pretokenizers") or part.get("decoders")
    return [p for sub in inner for p in _flatten(sub)] if inner else [part]


@dataclass
class TokenClasses:
    """Per-token word roles for one vocabulary, with sorted indexes for prefix look-ups."""

    strings: list[str]  # each token's text as it reads inside a text (" quick" for a spaced word start)
    starts_word: np.ndarray  # bool (V,): " word" tokens
    starts_bare: np.ndarray  # bool (V,): "Word" tokens, for a word with no space before it
    continues_word: np.ndarray  # bool (V,): letters with no leading space
    _sorted: dict[str, tuple[list[str], list[int]]]
    # Whether the first word of a text starts with a spaced token (SentencePiece's prefix space).
    space_at_start: bool = False

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int, special_ids: set[int]) -> TokenClasses:
        """The classes of a `tokenizers.Tokenizer`'s vocabulary, padded to the model's `vocab_size` (ids the
        tokenizer does not use never form words). Special tokens: `special_ids`, the tokenizer's added
        tokens and its unknown token."""
        starts = WordStarts.of(tokenizer)
        pieces = [""] * vocab_size
        for piece, i in tokenizer.get_vocab(with_added_tokens=False).items():
            if i < vocab_size:
                pieces[i] = piece
        specials = set(special_ids) | {i for i in tokenizer.get_added_tokens_decoder() if i < vocab_size}
        unk = (json.loads(tokenizer.to_str()).get("model") or {}).get("unk_token")
        if isinstance(unk, str) and tokenizer.token_to_id(unk) is not None:
            specials.add(tokenizer.token_to_id(unk))
        strings = [starts.token_text(p) if i not in specials else "" for i, p in enumerate(pieces)]
        classes = cls.from_strings(strings, specials)
        classes.space_at_start = starts.space_at_start
        return classes

    def first_word_is_bare(self, context: str, bare: bool) -> bool:
        """Whether the word after `context` starts with a bare token ("Word"), given `split_partial`'s `bare`:
        at the start of a text, only where the tokenizer adds no prefix space."""
        return bare and not (not context and self.space_at_start)

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
