"""The words a suggestion may be, how often English uses each, and how each is written.

Sources, in one index (`Lexicon`):
- general English: `wordfreq` (code Apache-2.0; its data CC BY-SA 4.0, used as an installed dependency, not
  redistributed here): every word of its large English list with a Zipf frequency >= 3 (once per million
  words or more), letters and inner apostrophes only, one-letter words only "a" and "I". The threshold keeps
  fragments out ("warr" 2.4, "sto" 2.9, "tomor" 1.3) and 28,000 words in;
- the model's own training text (`train.txt.gz` beside a bundled model): words it uses at least
  `MIN_TRAINING_COUNT` times;
- the user's own text: every word already typed before the word being typed (`Lexicon.for_text`).

How a word is written (`Lexicon.form`): the user's own form when they typed the word mid-sentence in this text;
else the training text's when it writes the word capitalised in at least `CAPITAL_SHARE` of its mid-sentence
uses and the word belongs to the text's domain rather than to general English ("Python", "API", "Unicode"; not
"None"); else the capitalised form of
`data/names.txt` (SCOWL's capitalised-only words: "London", "Monday", "BBC"); "I" and its contractions; else lower
case. `display` then applies the case rules: letters the user typed keep their case, the first letter is
capitalised at the start of a sentence, nowhere else unless the form has it.

The word search consults the index as it expands (`WordSet.has_prefix`), so that every beam can still become
a word, and keeps only words of the index (`in`)."""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from ondevice.keyboard.words import WORD

MIN_ZIPF = 3.0
MIN_TRAINING_COUNT = 5
CAPITAL_SHARE = 0.9
DOMAIN_RATIO = 30
ONE_LETTER_WORDS = frozenset({"a", "i"})
_STOP = re.compile(r"[.!?]")
_SENTENCE_END = re.compile(r"(?:^|[.!?][\"'”’)\]]*)[\s\"'“‘(\[]*$")


def capitalised_names() -> frozenset[str]:
    """The English words whose written form is capitalised (names, days, acronyms), from the package's data file
    `data/names.txt` (written by `python -m training.names` from SCOWL; provenance and licence in its header)."""
    text = capitalised_names_bytes().decode("utf-8")
    return frozenset(word for line in text.splitlines() if not line.startswith("#") for word in line.split())


def capitalised_names_bytes() -> bytes:
    from importlib.resources import files

    return (files("ondevice.keyboard") / "data" / "names.txt").read_bytes()


def sentence_start(before: str) -> bool:
    """Whether a word typed after `before` (the text up to the word, spaces included) starts a sentence: at
    the start of the text, after . ! ? (and closing quotes or brackets), or on a new line."""
    stripped = before.rstrip(" \t")
    return bool(_SENTENCE_END.search(stripped)) or stripped.endswith("\n")


def _is_lexicon_word(word: str) -> bool:
    return WORD.fullmatch(word) is not None and (len(word) > 1 or word in ONE_LETTER_WORDS)


def _ordinary_shape(word: str) -> bool:
    """lower, Capitalised or a short ACRONYM: not an identifier ("StopIteration", "PYTHONMALLOC")."""
    rest = word[1:]
    return not any(c.isupper() for c in rest) or (word.isupper() and len(word) <= 5)


def _i_form(key: str) -> str | None:
    """ "I", "I'm", "I'll", "I've", "I'd": the pronoun is always a capital."""
    if key == "i" or (key[:2] in ("i'", "i’") and key[2:].isalpha()):
        return "I" + key[1:]
    return None


class Lexicon:
    def __init__(
        self,
        english: dict[str, float],
        training: Counter | None = None,
        forms: dict[str, str] | None = None,
        training_weight: float = 0.3,
    ):
        """english: lower-case word -> frequency in running English; training: words of the model's training
        text as written -> count; forms: lower-case word -> its written form where not lower case."""
        self.english = english
        training = training or Counter()
        counts: Counter = Counter()
        for word, n in training.items():
            if _ordinary_shape(word):
                counts[word.lower()] += n
        self.training = Counter({w: n for w, n in counts.items() if n >= MIN_TRAINING_COUNT and _is_lexicon_word(w)})
        english_total = sum(english.values()) or 1.0
        training_total = sum(self.training.values()) or 1
        weight = training_weight if self.training else 0.0
        keys = set(english) | set(self.training)
        # The unigram the blend uses: general English and the model's training text, mixed.
        self.frequency = {
            w: (1 - weight) * english.get(w, 0.0) / english_total + weight * self.training.get(w, 0) / training_total
            for w in keys
        }
        self.keys = sorted(keys)
        self.forms = dict(forms or {})
        self._by_frequency: list[str] = sorted(self.keys, key=lambda w: -self.frequency[w])
        # start masks with a user store's words added, by (tokenizer classes, kind): (the store's words, mask)
        self.learned_masks: dict[tuple, tuple[dict, np.ndarray]] = {}

    @classmethod
    def english_words(cls, training_text: Path | None = None, training_weight: float = 0.3) -> Lexicon:
        """wordfreq's English (Zipf >= MIN_ZIPF) + the training text at `training_text`, if given."""
        return _cached_lexicon(str(training_text) if training_text else "", training_weight)

    def has_prefix(self, prefix: str) -> bool:
        """Whether some word starts with `prefix` (lower case)."""
        i = bisect.bisect_left(self.keys, prefix)
        return i < len(self.keys) and self.keys[i].startswith(prefix)

    def __contains__(self, word: str) -> bool:
        return word in self.frequency

    def __len__(self) -> int:
        return len(self.keys)

    def form(self, key: str) -> str:
        return self.forms.get(key) or _i_form(key) or key

    @lru_cache(maxsize=4096)  # noqa: B019 (one lexicon per model, kept for the process)
    def most_frequent(self, prefix: str, n: int) -> tuple[str, ...]:
        """The `n` most frequent words that start with `prefix` (lower case), most frequent first."""
        if not prefix:
            return tuple(self._by_frequency[:n])
        lo = bisect.bisect_left(self.keys, prefix)
        hi = bisect.bisect_left(self.keys, prefix + "\U0010ffff")
        return tuple(sorted(self.keys[lo:hi], key=lambda w: -self.frequency[w])[:n])

    def start_mask(self, classes, kind: str) -> np.ndarray:
        """bool (V,): tokens of `kind` ("start": " word", "bare": "Word") that some word begins with."""
        cache = self.__dict__.setdefault("_start_masks", {})
        key = (id(classes), kind)
        if key not in cache:
            mask = classes.starts_word if kind == "start" else classes.starts_bare
            strip = 1 if kind == "start" else 0
            ok = np.zeros_like(mask)
            for t in np.flatnonzero(mask):
                ok[t] = self.has_prefix(classes.strings[t][strip:].lower())
            cache[key] = (classes, ok)  # keep classes alive so that its id is not reused
        return cache[key][1]

    def continuation_index(self, classes) -> tuple[dict[str, list[int]], int]:
        """Continuation tokens by their lower-case text, and the longest such text."""
        cache = self.__dict__.setdefault("_continuations", {})
        if id(classes) not in cache:
            index: dict[str, list[int]] = {}
            for t in np.flatnonzero(classes.continues_word):
                index.setdefault(classes.strings[t].lower(), []).append(int(t))
            cache[id(classes)] = (classes, index, max(map(len, index), default=0))
        return cache[id(classes)][1:]

    def for_text(self, before: str, learned: dict[str, str] | None = None) -> WordSet:
        """The index for a word typed after `before`: the lexicon plus the words the user has typed there, and the
        words (and forms) learned from them before (`learning.UserStore.extra_forms`)."""
        return WordSet(self, before, learned)


class WordSet:
    """The lexicon plus the user's own words in this text, and the forms they wrote them in."""

    def __init__(self, lexicon: Lexicon, before: str, learned: dict[str, str] | None = None):
        self.lexicon = lexicon
        self.learned = learned or {}
        self.user_forms: dict[str, str] = dict(self.learned)  # this text's own forms (below) win
        self.user_counts: Counter = Counter()
        end = None  # as in training_words: a word first in the text or after . ! ? starts a sentence
        for match in WORD.finditer(before):
            word, key = match.group(0), match.group(0).lower()
            self.user_counts[key] += 1
            if end is not None and not _STOP.search(before, end, match.start()):
                self.user_forms[key] = word  # the latest mid-sentence form
            elif key not in self.user_forms:  # at a sentence start: its form with the capital taken back, "I" kept
                self.user_forms[key] = _i_form(key) or (
                    word[:1].lower() + word[1:] if word[1:].islower() or len(word) == 1 else word
                )
            end = match.end()
        self.user_keys = sorted(self.user_forms)

    def has_prefix(self, prefix: str) -> bool:
        if self.lexicon.has_prefix(prefix):
            return True
        i = bisect.bisect_left(self.user_keys, prefix)
        return i < len(self.user_keys) and self.user_keys[i].startswith(prefix)

    def __contains__(self, word: str) -> bool:
        return word in self.lexicon or word in self.user_forms

    def typed_words(self, prefix: str) -> list[str]:
        """The words typed in this text that start with `prefix` (not the learned ones: those the blend takes from
        the user's own model, with its probabilities)."""
        return sorted(w for w in self.user_counts if w.startswith(prefix))

    def user_words(self, prefix: str) -> list[str]:
        lo = bisect.bisect_left(self.user_keys, prefix)
        hi = bisect.bisect_left(self.user_keys, prefix + "\U0010ffff")
        return self.user_keys[lo:hi]

    def continuations(self, classes, prefix: str, limit: int = 48) -> np.ndarray | None:
        """Token ids that continue `prefix` (lower case) toward some word, read off the words that start with it
        where they are at most `limit`; None where more (then ask `has_prefix` token by token)."""
        keys = self.lexicon.keys
        lo = bisect.bisect_left(keys, prefix)
        hi = bisect.bisect_left(keys, prefix + "\U0010ffff")
        if hi - lo > limit:
            return None
        index, longest = self.lexicon.continuation_index(classes)
        ids: set[int] = set()
        for word in (*keys[lo:hi], *self.user_words(prefix)):
            rest = word[len(prefix) :]
            for end in range(1, min(len(rest), longest) + 1):
                ids.update(index.get(rest[:end], ()))
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    def start_mask(self, classes, kind: str) -> np.ndarray:
        mask = self.lexicon.start_mask(classes, kind)
        if self.learned:  # the learned words' part, once per store version (it is the same for every text)
            key = (id(classes), kind)
            cached = self.lexicon.learned_masks.get(key)
            if cached is None or cached[0] is not self.learned:
                words = [w for w in self.learned if w not in self.lexicon]
                cached = (self.learned, _with_words(mask, classes, kind, words))
                self.lexicon.learned_masks[key] = cached
            mask = cached[1]
        extra = [w for w in self.user_counts if w not in self.lexicon and w not in self.learned]
        return _with_words(mask, classes, kind, extra) if extra else mask

    def form(self, key: str) -> str:
        """How the word is written: the user's own mid-sentence form, else the lexicon's."""
        return self.user_forms.get(key) or self.lexicon.form(key)

    def display(self, key: str, typed: str, starts_sentence: bool) -> str:
        """The suggestion as shown: the letters typed as typed, the rest of the word's form; a capital first
        letter at the start of a sentence when nothing is typed yet. Typed in capitals (two or more), the
        rest follows in capitals; an acronym begun in lower case goes on in lower case."""
        form = self.form(key)
        if len(form) < len(typed):
            form = key
        if typed:
            rest = form[len(typed) :]
            letters = [c for c in typed if c.isalpha()]
            if len(letters) >= 2 and all(c.isupper() for c in letters):
                rest = rest.upper()
            elif len(form) > 1 and form.isupper() and not typed.isupper():
                rest = rest.lower()
            return typed + rest
        if starts_sentence:
            return form[:1].upper() + form[1:]
        return form


def _with_words(mask: np.ndarray, classes, kind: str, words: list[str]) -> np.ndarray:
    """`mask` (a copy) with the word-start tokens of `words` allowed."""
    if not words:
        return mask
    mask = mask.copy()
    strip = 1 if kind == "start" else 0
    for word in words:
        for t in classes.compatible(kind, (" " if strip else "") + word):
            mask[t] = word.startswith(classes.strings[t][strip:].lower())
    return mask


# A cached lexicon holds the inputs of `Lexicon` (English frequencies, training counts, forms), keyed by what they are
# built from; bump this when how they are built changes (english_frequencies, training_words, domain_forms), so that
# older cache files are not read.
LEXICON_CACHE_VERSION = 1


def lexicon_cache_dir() -> Path:
    """Where built lexicons are kept between runs: $ONDEVICE_CACHE/lexicon, else the user's cache folder
    ($XDG_CACHE_HOME or ~/.cache)/ondevice/lexicon."""
    root = os.environ.get("ONDEVICE_CACHE")
    if root:
        return Path(root) / "lexicon"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ondevice" / "lexicon"


@lru_cache(maxsize=4)
def _cached_lexicon(training_text: str, training_weight: float) -> Lexicon:
    """The lexicon, read from the user's cache when it was built before from the same inputs (building it reads
    wordfreq and counts the training text's words: ~2.5 s of `ondevice predict`'s start-up), else built and kept
    there. A cache file that cannot be read is rebuilt, one that cannot be written is skipped: never an error."""
    key = _lexicon_key(training_text, training_weight)
    path = lexicon_cache_dir() / f"{key}.json.gz"
    try:
        parts = json.loads(gzip.decompress(path.read_bytes()))
        return Lexicon(parts["english"], Counter(parts["training"]), parts["forms"], training_weight)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass
    english, training, forms = _lexicon_inputs(training_text)
    lexicon = Lexicon(english, training, forms, training_weight)
    parts = {"english": lexicon.english, "training": dict(lexicon.training), "forms": lexicon.forms}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(gzip.compress(json.dumps(parts).encode("utf-8"), compresslevel=1))
        os.replace(tmp.name, path)
    except OSError:
        pass
    return lexicon


def _lexicon_key(training_text: str, training_weight: float) -> str:
    """What a lexicon is built from: the training text's bytes, wordfreq's version, this module's settings."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    settings = [LEXICON_CACHE_VERSION, version("wordfreq"), MIN_ZIPF, MIN_TRAINING_COUNT, CAPITAL_SHARE, DOMAIN_RATIO,
                sorted(ONE_LETTER_WORDS), training_weight]  # fmt: skip
    digest.update(json.dumps(settings).encode())
    digest.update(capitalised_names_bytes())
    if training_text:
        digest.update(Path(training_text).read_bytes())
    return digest.hexdigest()[:32]


def _lexicon_inputs(training_text: str) -> tuple[dict[str, float], Counter, dict[str, str]]:
    english = english_frequencies()
    forms = {name.lower(): name for name in capitalised_names()}
    training: Counter = Counter()
    if training_text:
        text = Path(training_text).read_bytes()
        if training_text.endswith(".gz"):
            text = gzip.decompress(text)
        training, training_forms = training_words(text.decode("utf-8", errors="replace"))
        forms.update(domain_forms(training_forms, training, english))
    return english, training, forms


def domain_forms(forms: dict[str, str], training: Counter, english: dict[str, float]) -> dict[str, str]:
    """The training text's forms of the words of its own domain: unknown to general English, or DOMAIN_RATIO times
    more frequent in the training text ("Python" 880x, "API" 130x; not "None" 25x, nor "ace" or "cab").
    training: words as written -> count."""
    lower: Counter = Counter()
    for word, n in training.items():
        lower[word.lower()] += n
    training_total, english_total = sum(lower.values()) or 1, sum(english.values()) or 1.0
    return {
        key: form
        for key, form in forms.items()
        if key not in english or lower[key] / training_total >= DOMAIN_RATIO * english[key] / english_total
    }


@lru_cache(maxsize=1)
def english_frequencies(min_zipf: float = MIN_ZIPF) -> dict[str, float]:
    """wordfreq's large English list: words (letters, inner apostrophes) used at least 10**(min_zipf - 9)."""
    import wordfreq

    floor = 10 ** (min_zipf - 9)
    return {
        w: f
        for w, f in wordfreq.get_frequency_dict("en", wordlist="large").items()
        if f >= floor and _is_lexicon_word(w)
    }


def training_words(text: str) -> tuple[Counter, dict[str, str]]:
    """Counts of the words of a text as written, and the forms of those it writes with a capital in at least
    CAPITAL_SHARE of its mid-sentence uses (and MIN_TRAINING_COUNT times)."""
    counts: Counter = Counter()
    mid_sentence: Counter = Counter()
    for line in text.splitlines():
        end = None  # where the previous word ended: a word after . ! ? or first in its line starts a sentence
        for match in WORD.finditer(line):
            word = match.group(0)
            counts[word] += 1
            if end is not None and not _STOP.search(line, end, match.start()):
                mid_sentence[word] += 1
            end = match.end()
    by_key: dict[str, Counter] = {}
    for word, n in mid_sentence.items():
        by_key.setdefault(word.lower(), Counter())[word] = n
    forms = {}
    for key, uses in by_key.items():
        form, n = uses.most_common(1)[0]
        if form != key and n >= MIN_TRAINING_COUNT and n >= CAPITAL_SHARE * sum(uses.values()):
            forms[key] = form
    return counts, forms
