"""Predictive text on any causal LM with a tokenizer, a shared runner over every registered causal family (the Llama
family's every dialect): each with a byte-level BPE
(GPT-2, Llama 3, Qwen, SmolLM2), a SentencePiece-style BPE with byte fallback (Llama 2) and a SentencePiece-style
Unigram with byte fallback (Mistral-like), all trained here on the bundled model's training text.

Where words begin is read off each tokenizer (`WordStarts`); the exact engine must equal a brute-force scorer
that runs the transformers model on every spelling, on torch-ane (GPT-2's batched branch scorer; the Llama
family's prefill-and-trim fallback), on MLX and on a Core ML package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ondevice.keyboard import Predictor
from ondevice.keyboard.words import WORD, WordStarts, split_partial
from tests.keyboard_fixtures import TOKENIZER_STYLES, brute_force, keyboard_dialects, make_family_keyboard_checkpoint

DIALECTS = keyboard_dialects()  # every registered causal family, each Llama dialect
CASES = ["", "The ", "The object is ", "A pointer to the bu", "(se", "We don't kno", "Return the ref"]
EXACT_CASES = ["", "The object is ", "A pointer to the bu", "(se", "We don't kno"]

_DIRS: dict = {}


def checkpoint(tmp_path_factory, dialect: str, style: str):
    """One checkpoint per (dialect, style) for the whole session; Qwen's vocabulary padded past the tokenizer's."""
    key = (dialect, style)
    if key not in _DIRS:
        directory = tmp_path_factory.mktemp(f"{dialect}-{style}")
        _DIRS[key] = make_family_keyboard_checkpoint(
            directory, dialect, style, pad_vocab=8 if dialect.startswith("qwen") else 0
        )
    return _DIRS[key]


_REFERENCES: dict = {}


def reference(directory):
    from transformers import AutoModelForCausalLM

    if directory not in _REFERENCES:
        _REFERENCES[directory] = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return _REFERENCES[directory]


def _word_tokens(batched: bool, text: str, style: str) -> int:
    """Words of up to 3 tokens (2 for next words) where continuations are scored in one batch (GPT-2's branch
    scorer) with GPT-2's own byte-level vocabulary; one fewer through prefill and trim, one continuation at a time
    (every 2-token word of a 520-token vocabulary is ~25k model calls), and one fewer for GPT-2 with the
    SentencePiece-style vocabularies, a pairing no real checkpoint has (the word starts are what they check)."""
    return (3 if split_partial(text)[1] else 2) - (not batched or style != "byte-level")


def _assert_exact(predictor: Predictor, model, text: str, max_tokens: int, rtol: float = 1e-4) -> None:
    got = [(s.word, s.probability) for s in predictor.suggest(text)]
    want = brute_force(predictor, model, text, max_tokens, k=predictor.k)
    assert [w for w, _ in got] == [w for w, _ in want], text
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=rtol)


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
@pytest.mark.parametrize("dialect", ["llama", "qwen2"])
def test_word_starts_are_read_off_the_tokenizer(tmp_path_factory, dialect, style):
    """From the checkpoint's own tokenizer.json, whatever tokenizer its model type usually has (transformers 5
    loads any qwen2 checkpoint's tokenizer as Qwen2's byte-level one)."""
    predictor = Predictor(checkpoint(tmp_path_factory, dialect, style))
    starts = WordStarts.of(predictor.tokenizer)
    if style == "byte-level":
        assert (starts.style, starts.marker, starts.space_at_start) == ("byte-level", "Ġ", False)
    else:
        assert (starts.style, starts.marker, starts.space_at_start, starts.byte_fallback) == (
            "metaspace",
            "▁",
            True,
            True,
        )
        assert starts.token_text("<0x41>") == "A" and starts.token_text("<0xC3>") == "\ufffd"
    classes, vocab = predictor.classes, predictor.tokenizer.get_vocab()
    for piece in ("Ġthe", "▁the"):
        if piece in vocab:
            assert classes.strings[vocab[piece]] == " the" and classes.starts_word[vocab[piece]]
    # Special tokens never form words; every word-start token reads " letters", every continuation letters.
    for token in predictor.tokenizer.get_added_tokens_decoder():
        assert not (classes.starts_word[token] or classes.continues_word[token] or classes.starts_bare[token])
    assert all(WORD.fullmatch(classes.strings[i][1:]) for i in np.flatnonzero(classes.starts_word))
    assert all(WORD.fullmatch(classes.strings[i]) for i in np.flatnonzero(classes.continues_word))
    # The context is the tokenizer's own encoding after one start token: no second <s> from its template.
    ids = predictor.context.token_ids("The object")
    assert ids[0] == predictor.context.start_token and ids.count(predictor.context.start_token) == 1


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_exact_engine_equals_brute_force(tmp_path_factory, dialect, style):
    """torch-ane: GPT-2 through its batched branch scorer, the Llama family through prefill and trim."""
    directory = checkpoint(tmp_path_factory, dialect, style)
    model = reference(directory)
    batched = getattr(Predictor(directory).lm, "branches", None) is not None
    for text in EXACT_CASES:
        max_tokens = _word_tokens(batched, text, style)
        _assert_exact(Predictor(directory, beam_width=None, max_word_tokens=max_tokens, k=5), model, text, max_tokens)


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
@pytest.mark.parametrize("dialect", ["llama", "qwen3"])
def test_exact_engine_equals_brute_force_on_mlx(tmp_path_factory, dialect, style):
    pytest.importorskip("mlx.core")
    directory = checkpoint(tmp_path_factory, dialect, style)
    model = reference(directory)
    for text in ("", "A pointer to the bu", "We don't kno"):
        max_tokens = 1 + bool(split_partial(text)[1])  # one continuation at a time on MLX
        predictor = Predictor(directory, backend="mlx", beam_width=None, max_word_tokens=max_tokens, k=5)
        _assert_exact(predictor, model, text, max_tokens, rtol=2e-4)


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_a_text_starts_with_the_tokenizers_own_first_word(tmp_path_factory, style):
    """At the start of a text, a SentencePiece-style vocabulary spells the first word with its prefix space
    ("▁The"), a byte-level one bare ("The"): both are found, and both equal brute force."""
    directory = checkpoint(tmp_path_factory, "llama", style)
    predictor = Predictor(directory, beam_width=None, max_word_tokens=2, k=5)
    assert predictor.classes.first_word_is_bare("", True) is (style == "byte-level")
    assert predictor.classes.first_word_is_bare("(", True)  # glued to a bracket: bare in every style
    _assert_exact(predictor, reference(directory), "th", 2)
    _assert_exact(Predictor(directory, beam_width=None, max_word_tokens=1, k=5), reference(directory), "", 1)


_PREDICTORS: dict = {}


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
@pytest.mark.parametrize("dialect", ["llama", "mistral", "qwen2"])
def test_default_beam_gives_whole_words_that_start_with_the_typed_letters(tmp_path_factory, dialect, style):
    directory = checkpoint(tmp_path_factory, dialect, style)
    _PREDICTORS[(dialect, style)] = predictor = Predictor(directory)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(text=st.text(max_size=60) | st.sampled_from([*CASES, "I am going to the sto", "Happy birth", "x" * 200]))
    def check(text):
        suggestions = predictor.suggest(text)
        words = [s.word for s in suggestions]
        assert len(words) <= 3
        assert all(WORD.fullmatch(w) for w in words), words  # whole words: letters, inner apostrophes
        assert len({w.lower() for w in words}) == len(words)
        partial = split_partial(text)[1]
        assert all(w.lower().startswith(partial.lower()) for w in words), (text, words)
        assert all(0 < s.probability <= 1 for s in suggestions)

    check()
    # Next-word suggestions after a space, completions after letters: both non-empty on ordinary text.
    assert predictor.suggest("The object is ") and predictor.suggest("The object is re")


def test_llama_family_without_a_branch_scorer_gives_the_suggestions_of_recomputing(tmp_path_factory):
    """The Llama family has no batched branch scorer on the CPU: the search's continuations go through prefill
    and trim, and typing through a paragraph (cache reuse, rewinds) gives what a fresh predictor gives."""
    directory = checkpoint(tmp_path_factory, "llama", "sentencepiece-bpe")
    live, fresh = Predictor(directory), Predictor(directory)
    assert getattr(live.lm, "branches", None) is None
    text = "Return the reference to the object, or NULL"
    for end in range(len(text) + 1):
        fresh.reset()
        a, b = live.suggest(text[:end]), fresh.suggest(text[:end])
        assert [s.word for s in a] == [s.word for s in b], text[:end]
        np.testing.assert_allclose([s.probability for s in a], [s.probability for s in b], rtol=1e-4)
    assert live.lm.length == len(live.context.ids)


@pytest.fixture(scope="module")
def llama_package(tmp_path_factory):
    from convert.coreml import CoreMLOptions, convert_to_coreml

    directory = checkpoint(tmp_path_factory, "llama", "sentencepiece-bpe")
    package = tmp_path_factory.mktemp("pkg") / "keyboard-llama.mlpackage"
    convert_to_coreml(str(directory), package, CoreMLOptions(dtype="fp32", seq_lens=(16,), context=64))
    return directory, package


def test_core_ml_package_of_a_llama_with_a_sentencepiece_tokenizer(llama_package):
    """The package carries the tokenizer: the same word starts, and the exact engine on it equals brute force."""
    directory, package = llama_package
    on_package = Predictor(package, backend="coreml", beam_width=None, max_word_tokens=1, k=5)
    assert WordStarts.of(on_package.tokenizer).style == "metaspace"
    model = reference(directory)
    for text in ("The ", "A pointer to the bu"):
        _assert_exact(on_package, model, text, 1, rtol=1e-3)


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_the_english_lexicon_on_each_tokenizer_style(tmp_path_factory, style):
    """The lexicon, the case rules and the blend ride on the same word starts: real words, the typed letters
    kept, on a Llama with each tokenizer style (a random one: only the lexicon makes its words real)."""
    from ondevice.keyboard.blend import Blend

    predictor = Predictor(
        checkpoint(tmp_path_factory, "llama", style), lexicon="english", blend_weights=Blend(lexicon=0.5)
    )
    for text in ("", "The object is ", "I will see you tomor", "A pointer to the Bu", "(se"):
        shown = [s.word for s in predictor.suggest(text)]
        partial = split_partial(text)[1]
        assert shown and all(w.startswith(partial) for w in shown), (text, shown)
        assert all(w.lower() in predictor.lexicon.for_text(text[: len(text) - len(partial)]) for w in shown)
    assert predictor.suggest("I will see you tomor")[0].word == "tomorrow"
