"""`Predictor(...).suggest(text)`: keyboard suggestions for the text typed so far, on any backend.

With nothing of the current word typed, the suggestions are the next words; with some letters typed,
they are completions of that word. Either way they are whole, real words, deduplicated, ranked by
probability, with the model's capitalisation (or the user's, when the user typed a capital)."""

from __future__ import annotations

from pathlib import Path

import torch

from canonical.errors import InputError
from convert.checkpoint import load_checkpoint
from coreml_runtime.package import TOKENIZER_DIR
from ondevice.backends import load_backend
from ondevice.keyboard.beam import Suggestion, search_words
from ondevice.keyboard.context import ContextCache
from ondevice.keyboard.words import TokenClasses, split_partial

DEFAULT_MODEL = "keyboard-gpt2"
END_OF_TEXT = "<|endoftext|>"


class Predictor:
    def __init__(self, model: str | Path = DEFAULT_MODEL, backend: str = "torch-ane", k: int = 3,
                 max_context_tokens: int = 64, beam_width: int | None = 8, max_word_tokens: int = 4,
                 dtype: str = "fp32", threads: int | None = 1):
        """model: a checkpoint (directory, bundled name, cached id), or with backend="coreml" a package
        written by `ondevice convert --to coreml` (its tokenizer travels inside it)."""
        if backend == "torch-ane" and threads:
            # One keystroke runs a few single-token forwards of a small model: splitting such tiny ops over
            # threads costs more than it saves (measured 10-30 ms per keystroke on one thread, ~1 s on
            # two when the other core was busy).
            torch.set_num_threads(threads)
        self.k, self.beam_width, self.max_word_tokens = k, beam_width, max_word_tokens
        if backend == "coreml":
            self.lm, directory = _coreml_package(model), Path(model) / TOKENIZER_DIR
            max_context_tokens = min(max_context_tokens, self.lm.capacity - max_word_tokens)
        else:
            checkpoint = load_checkpoint(model)
            if not checkpoint.config.is_causal:
                raise InputError(f"{checkpoint.directory}: predictive text needs a causal LM, not "
                                 f"{checkpoint.model_type}")
            directory = checkpoint.directory
            max_context_tokens = min(max_context_tokens, checkpoint.config.max_positions - max_word_tokens)
            self.lm = load_backend(backend, checkpoint, dtype=dtype, capacity=max_context_tokens + max_word_tokens)
        config = self.lm.config
        self.checkpoint_dir = directory
        self.tokenizer = _load_tokenizer(directory)
        vocab = config.vocab_size
        specials = set(self.tokenizer.get_added_tokens_decoder()) | {config.bos_token_id, *config.eos_token_ids}
        start = self.tokenizer.token_to_id(END_OF_TEXT)
        if start is None:
            start = config.bos_token_id if config.bos_token_id is not None else 0
        self.classes = TokenClasses.from_strings([self.tokenizer.decode([i]) for i in range(vocab)], specials)
        self.context = ContextCache(self.lm, self.tokenizer, start, max_context_tokens)

    def suggest(self, text: str, k: int | None = None) -> list[Suggestion]:
        context, partial, bare = split_partial(text)
        root = self.context.root_logprobs(context)
        found = search_words(root, self.context.expand, self.classes, partial=partial,
                             bare_start=bare, k=k or self.k, beam_width=self.beam_width,
                             max_tokens=self.max_word_tokens)
        if partial[:1].isupper():  # the user's capital wins over the model's lower case
            found = [Suggestion(s.word[:1].upper() + s.word[1:], s.probability) for s in found]
        return found

    def reset(self) -> None:
        """Forget everything cached: the next suggestion is computed from scratch."""
        self.context.reset()


def _coreml_package(package: str | Path):
    """A converted causal-LM package as a `CausalLM`: Core ML itself on a Mac, our numpy evaluator of its ML
    program elsewhere (exact, but far too slow for live typing: for checks, not for use)."""
    from ondevice.backends.coreml import load_package

    path = Path(package)
    if path.suffix != ".mlpackage" or not path.is_dir():
        raise InputError(f"{package}: the coreml backend runs a converted package: pass --model PATH.mlpackage "
                         "(written by 'ondevice convert CHECKPOINT --to coreml')")
    lm = load_package(path)
    if not lm.config.is_causal:
        raise InputError(f"{package}: predictive text needs a causal LM package, not an encoder")
    return lm


def _load_tokenizer(directory: Path):
    """The checkpoint's fast tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt)."""
    from transformers import AutoTokenizer

    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
        # transformers 5 returns an empty tokenizer for a directory without one, rather than failing.
        raise InputError(f"{directory}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    try:
        return AutoTokenizer.from_pretrained(directory).backend_tokenizer
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}: no usable tokenizer files ({exc})") from exc
