"""`Predictor(...).suggest(text)`: keyboard suggestions for the text typed so far, on any backend.

With nothing of the current word typed, the suggestions are the next words; with some letters typed,
they are completions of that word. Either way they are whole words, deduplicated, ranked by probability.

With a lexicon (`lexicon="english"`, or "auto" where the model's keyboard.json asks for one, as the bundled
model's does) they are words of a real English lexicon, of the model's training text or of the user's own
text (`lexicon.py`), found by a search that consults the lexicon as it expands, mixed with the lexicon's
frequencies and the n-gram baseline's where it knows the context (`blend.py`), and written by the case rules:
the letters typed as typed, a capital first letter at the start of a sentence, other capitals only where the
word's form has them. Without one: the model's words and capitalisation (or the user's capital)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from canonical.config import check_tokenizer_fits
from canonical.errors import InputError
from convert.checkpoint import load_checkpoint
from coreml_runtime.chunked import is_coreml_model, tokenizer_dir
from ondevice.backends import load_backend
from ondevice.keyboard.beam import Suggestion, log_softmax, score_spellings, search_words
from ondevice.keyboard.blend import Blend, blend
from ondevice.keyboard.context import ContextCache
from ondevice.keyboard.learning import UserStore
from ondevice.keyboard.lexicon import Lexicon, WordSet, sentence_start
from ondevice.keyboard.phrases import PhraseRule, extend
from ondevice.keyboard.words import TokenClasses, split_partial

DEFAULT_MODEL = "keyboard-gpt2"
END_OF_TEXT = "<|endoftext|>"
KEYBOARD_SETTINGS = "keyboard.json"  # beside a model: {"lexicon": "english", "blend": {"lexicon": .., "ngram": ..}}
TRAINING_TEXT = "train.txt.gz"  # beside a bundled model: the text it was trained on
SPELLING_SLACK = 4  # tokens past the search's for scoring a lexicon word's own spelling


class Predictor:
    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        backend: str = "torch-ane",
        k: int = 3,
        max_context_tokens: int = 64,
        beam_width: int | None = 8,
        max_word_tokens: int = 4,
        dtype: str = "fp32",
        threads: int | None = 1,
        lexicon: str | Lexicon | None = "auto",
        blend_weights: Blend | None = None,
        ngram=None,
        learning: UserStore | None = None,
        phrases: PhraseRule | str | None = "auto",
    ):
        """model: a checkpoint (directory, bundled name, cached id), or with backend="coreml" a package
        written by `ondevice convert --to coreml` (its tokenizer travels inside it).

        lexicon: "auto" (what the model's keyboard.json says; none without one), "english", None (the model's
        words as it spells them), or a `Lexicon`. blend_weights: the mixture of `blend.py` (default: the
        model's keyboard.json, else the model alone); ngram: an `NGramModel` for its n-gram part; learning: what was
        learned from the user (`learning.UserStore`), blended in where there is a lexicon; `learn` adds to it;
        phrases: "auto" (keyboard.json's "phrases": none without), "on" (its rule, else the default rule), a
        `PhraseRule`, or None (single words only)."""
        if backend == "torch-ane" and threads:
            # One keystroke runs a few single-token forwards of a small model: splitting such tiny ops over
            # threads costs more than it saves (measured 10-30 ms per keystroke on one thread, ~1 s on
            # two when the other core was busy).
            torch.set_num_threads(threads)
        self.k, self.beam_width, self.max_word_tokens = k, beam_width, max_word_tokens
        if backend == "coreml":
            package = _coreml_package(model)
            directory = tokenizer_dir(model)
        else:
            checkpoint = load_checkpoint(model)
            if not checkpoint.config.is_causal:
                raise InputError(
                    f"{checkpoint.directory}: predictive text needs a causal LM, not {checkpoint.model_type}"
                )
            directory = checkpoint.directory
        settings = _settings(directory)
        if lexicon == "auto":
            lexicon = settings.get("lexicon")
        if lexicon == "english":
            training = directory / TRAINING_TEXT
            lexicon = Lexicon.english_words(training if training.is_file() else None)
        elif lexicon is not None and not isinstance(lexicon, Lexicon):
            raise InputError(f"unknown lexicon {lexicon!r} (choose english, auto or none)")
        self.lexicon: Lexicon | None = lexicon
        if phrases in ("auto", "on"):
            phrases = PhraseRule.from_settings(settings.get("phrases") or phrases == "on")
        elif isinstance(phrases, str):
            raise InputError(f"unknown phrases setting {phrases!r} (auto, on, a PhraseRule or None)")
        self.phrases: PhraseRule | None = phrases
        # Room past the context for a word: the search's tokens, and with a lexicon a few more for scoring the
        # tokenizer's spelling of a lexicon word the search did not reach (" warranty" is 5 tokens); a phrase's
        # further words after its first.
        room = max_word_tokens + (SPELLING_SLACK if lexicon is not None else 0)
        if self.phrases is not None:
            room += max_word_tokens * (self.phrases.max_words - 1)
        if backend == "coreml":
            self.lm = package
            max_context_tokens = min(max_context_tokens, self.lm.capacity - room)
        else:
            max_context_tokens = min(max_context_tokens, checkpoint.config.max_positions - room)
            self.lm = load_backend(backend, checkpoint, dtype=dtype, capacity=max_context_tokens + room)
        config = self.lm.config
        self.checkpoint_dir = directory
        self.tokenizer = _load_tokenizer(directory)
        check_tokenizer_fits(self.tokenizer.get_vocab_size(with_added_tokens=True), config.vocab_size, directory)
        specials = {i for i in (config.bos_token_id, *config.eos_token_ids) if i is not None}
        start = self.tokenizer.token_to_id(END_OF_TEXT)
        if start is None:
            start = config.bos_token_id if config.bos_token_id is not None else 0
        # Where words begin, read off the tokenizer (byte-level "Ġ" or SentencePiece "▁"; words.WordStarts).
        self.classes = TokenClasses.from_tokenizer(self.tokenizer, config.vocab_size, specials)
        self.context = ContextCache(self.lm, self.tokenizer, start, max_context_tokens)
        self.blend = blend_weights or Blend(**settings.get("blend", {}))
        self.ngram = ngram
        self.learning = learning
        self._word_set: tuple[str, WordSet, dict | None] | None = None

    def suggest(self, text: str, k: int | None = None) -> list[Suggestion]:
        k = k or self.k
        context, partial, bare = split_partial(text)
        before = text[: len(text) - len(partial)]
        words = self._words(before)
        root = self.context.root_logprobs(context)
        learned = self.learning is not None and self.blend.user > 0
        mixing = words is not None and (self.blend.lexicon > 0 or self.blend.ngram > 0 or learned)
        bare_start = self.classes.first_word_is_bare(context, bare)
        found = search_words(
            root,
            self.context.expand,
            self.classes,
            partial=partial,
            bare_start=bare_start,
            k=max(k, self.blend.candidates) if mixing else k,
            beam_width=self.beam_width,
            max_tokens=self.max_word_tokens,
            words=words,
            # the lexicon's candidates' own spellings, scored in the search's batches rather than after it
            also=self._lexicon_spellings(words, partial, bare_start) if mixing and self.blend.lexicon > 0 else (),
        )
        if words is None:
            if partial[:1].isupper():  # the user's capital wins over the model's lower case
                found = [Suggestion(s.word[:1].upper() + s.word[1:], s.probability) for s in found]
            return self._with_phrase(found, bare_start, None, k)

        def score_missing(candidates: list[str]) -> dict[str, float]:
            forms = [words.display(w, partial, False) for w in candidates]
            spellings = {w: self._spelling(form, bare_start) for w, form in zip(candidates, forms, strict=True)}
            room = self.lm.capacity - len(self.context.ids)
            fitting = {w: t for w, t in spellings.items() if t and len(t) <= room}
            return score_spellings(root, self.context.expand, self.classes, fitting)

        ranked = (
            blend(found, partial, words, self.ngram, context, self.blend, k, score_missing, self.learning)
            if mixing
            else [(s.word.lower(), s.probability) for s in found]
        )
        starts = sentence_start(before)
        shown = [Suggestion(words.display(key, partial, starts), score) for key, score in ranked[:k]]
        return self._with_phrase(shown, bare_start, words, k)

    def _with_phrase(self, shown: list[Suggestion], bare_start: bool, words, k: int) -> list[Suggestion]:
        """`shown` with the top word's phrase in the last place where it is more probable (`phrases.py`)."""
        phrase = self._phrase(shown[0], bare_start, words) if self.phrases is not None and shown else None
        if phrase is None or (len(shown) >= k and phrase.probability <= shown[k - 1].probability):
            return shown
        kept = shown[: k - 1] if len(shown) >= k else shown
        return sorted([*kept, phrase], key=lambda s: s.probability, reverse=True)

    def _phrase(self, first: Suggestion, bare_start: bool, words) -> Suggestion | None:
        """The phrase that `first` begins, where the rule finds one: its words, the product of probabilities."""
        assert self.phrases is not None
        tokens = self._spelling(first.word, bare_start)
        if tokens is None:
            return None
        room = self.lm.capacity - len(self.context.ids)

        def next_word(prefix: tuple[int, ...]):
            if len(prefix) + self.max_word_tokens > room:
                return None
            root = log_softmax(self.context.expand([prefix])[0].astype(np.float64))
            found = search_words(
                root,
                lambda sequences: self.context.expand([prefix + tuple(s) for s in sequences]),
                self.classes,
                k=1,
                beam_width=self.beam_width,
                max_tokens=self.max_word_tokens,
                words=words,
            )
            if not found:
                return None
            form = words.display(found[0].word.lower(), "", False) if words is not None else found[0].word
            spelled = self._spelling(form, False)
            return None if spelled is None else (form, found[0].probability, spelled)

        extended = extend(tokens, first.probability, next_word, self.phrases)
        if extended is None:
            return None
        more, probability = extended
        return Suggestion(" ".join([first.word, *more]), probability)

    def _lexicon_spellings(self, words: WordSet, partial: str, bare_start: bool) -> list[tuple[int, ...]]:
        """The spellings of the lexicon's and the text's candidates for `partial` (`blend.blend`'s), which the blend
        scores where the search does not reach them."""
        prefix = partial.lower()
        candidates = [*words.lexicon.most_frequent(prefix, self.blend.candidates), *words.typed_words(prefix)]
        room = self.lm.capacity - len(self.context.ids)
        spellings = (self._spelling(words.display(w, partial, False), bare_start) for w in dict.fromkeys(candidates))
        return [t for t in spellings if t and len(t) <= room]

    def _spelling(self, word: str, bare_start: bool) -> tuple[int, ...] | None:
        """The tokenizer's own tokens for `word` as the next word (with its leading space unless bare), or None
        where they are not a word-start token and continuations (then the word is not scored)."""
        classes = self.classes
        # A SentencePiece-style tokenizer writes the prefix space itself ("▁warranty" for "warranty").
        text = word if bare_start or classes.space_at_start else " " + word
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        first = classes.starts_bare if bare_start else classes.starts_word
        if not ids or len(ids) > 8 or not first[ids[0]] or not all(classes.continues_word[t] for t in ids[1:]):
            return None
        return tuple(ids)

    def _words(self, before: str):
        """The lexicon plus the user's words before the word being typed; the same while typing inside a word."""
        if self.lexicon is None:
            return None
        learned = None if self.learning is None else self.learning.extra_forms(self.lexicon)
        if self._word_set is None or self._word_set[0] != before or self._word_set[2] is not learned:
            self._word_set = (before, self.lexicon.for_text(before, learned), learned)
        return self._word_set[1]

    def learn(self, text: str) -> None:
        """Remember what the user typed (`learning.UserStore.learn`); nothing without a store."""
        if self.learning is not None:
            self.learning.learn(text)

    def reset(self) -> None:
        """Forget everything cached: the next suggestion is computed from scratch."""
        self.context.reset()
        self._word_set = None


def _settings(directory: Path) -> dict:
    """The model's keyboard.json (lexicon and blend weights), or {} where it has none."""
    import json

    path = directory / KEYBOARD_SETTINGS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable keyboard settings file ({exc})") from exc


def _coreml_package(package: str | Path):
    """A converted causal-LM package as a `CausalLM`: Core ML itself on a Mac, our numpy evaluator of its ML
    program elsewhere (exact, but far too slow for live typing: for checks, not for use)."""
    from ondevice.backends.coreml import load_package

    path = Path(package)
    if not (is_coreml_model(path) and path.is_dir()):
        raise InputError(
            f"{package}: the coreml backend runs a converted package: pass --model PATH.mlpackage or a chunked "
            "model's folder (written by 'ondevice convert CHECKPOINT --to coreml')"
        )
    lm = load_package(path)
    if not lm.config.is_causal:
        raise InputError(f"{package}: predictive text needs a causal LM package, not an encoder")
    return lm


def _load_tokenizer(directory: Path):
    """The checkpoint's fast tokenizer: its tokenizer.json as written (transformers 5 would swap in the
    pipeline its model type usually has: Qwen2's byte-level one for any qwen2 checkpoint), or GPT-2's
    vocab.json + merges.txt through transformers."""
    from tokenizers import Tokenizer

    if (directory / "tokenizer.json").is_file():  # `tokenizers` alone: importing transformers costs ~1 s of start-up
        try:
            return Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception subclass for a malformed file
            raise InputError(f"{directory}: no usable tokenizer files ({exc})") from exc
    if not (directory / "vocab.json").is_file():
        # transformers 5 returns an empty tokenizer for a directory without one, rather than failing.
        raise InputError(f"{directory}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory).backend_tokenizer
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}: no usable tokenizer files ({exc})") from exc
