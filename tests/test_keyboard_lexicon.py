"""Suggestions a person would keep using: words of a real lexicon, the case rules, the lexicon as the search's
index (still exact against brute force), the blend, and the issue's examples on the bundled keyboard (its replay of
held-out text, every word shown checked, is in test_bundled_keyboard_model.py and test_bundled_keyboard_everyday.py)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from bundled_models import keyboard_gpt2_path
from ondevice.keyboard import Predictor
from ondevice.keyboard.blend import Blend
from ondevice.keyboard.lexicon import Lexicon, sentence_start
from ondevice.keyboard.words import split_partial
from tests.keyboard_fixtures import SENTENCES, make_keyboard_checkpoint

BUNDLE = keyboard_gpt2_path()


@pytest.fixture(scope="module")
def english():
    return Lexicon.english_words(BUNDLE / "train.txt.gz")


def test_fragments_are_not_words_and_common_words_are(english):
    for fragment in ("tomor", "warr", "sto", "stor", "birthation", "b", "u"):
        assert fragment not in english, fragment
    for word in ("tomorrow", "warranty", "birthday", "store", "a", "i", "don't", "python", "unicode"):
        assert word in english, word
    assert english.has_prefix("tomor") and not english.has_prefix("tomorx")
    assert 20_000 < len(english) < 60_000


def test_forms_names_acronyms_and_the_training_texts_own_words(english):
    assert [english.form(w) for w in ("i", "i'm", "london", "monday", "api", "python", "none", "windows", "the")] == [
        "I",
        "I'm",
        "London",
        "Monday",
        "API",
        "Python",
        "none",
        "windows",
        "the",
    ]


def test_a_sentence_start_in_the_users_text_keeps_i_a_capital(english):
    """The user's words at a sentence start are remembered with their capital taken back ("Thanks" -> "thanks"), but
    the pronoun keeps it: "I think " went on to suggest "i" before."""
    typed = english.for_text("I think I'm right. Thanks, I'll see. ")
    assert [typed.display(w, "", False) for w in ("i", "i'm", "i'll", "thanks")] == ["I", "I'm", "I'll", "thanks"]


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ("", True),
        ("Hello. ", True),
        ("Really?! ", True),
        ('He said: "Stop." ', True),
        ("One.\n", True),
        ('"', True),
        ("(", True),
        ("The ", False),
        ("e.g. the ", False),
        ("Hello, ", False),
        ("3.14 ", False),
    ],
)
def test_sentence_start(before, expected):
    assert sentence_start(before) is expected


def test_case_rules(english):
    words = english.for_text("We use python here. The API of ")
    show = words.display
    assert show("tomorrow", "", False) == "tomorrow"
    assert show("tomorrow", "", True) == "Tomorrow"  # the start of a sentence
    assert show("tomorrow", "To", False) == "Tomorrow"  # the user's capital stays
    assert show("tomorrow", "to", True) == "tomorrow"  # and so does their lower case
    assert show("london", "", False) == "London" and show("i", "", False) == "I"
    assert show("python", "", False) == "python"  # the user wrote it in lower case mid-sentence: their form
    assert show("api", "ap", False) == "api"  # an acronym begun in lower case goes on in lower case
    assert show("tomorrow", "TOM", False) == "TOMORROW"  # typing in capitals
    assert english.for_text("").display("python", "", False) == "Python"  # the training text's form


def test_the_users_own_words_join_the_lexicon(english):
    words = english.for_text("Meet Zorblax at the zorblatorium. Then ")
    assert "zorblax" in words and "zorblatorium" in words and "zorbla" not in words
    assert words.has_prefix("zorbl") and words.display("zorblax", "", False) == "Zorblax"
    assert words.display("zorblatorium", "", False) == "zorblatorium"


# --- the lexicon as the search's index: exact against brute force ------------------------------------------

_SMALL_TEXT = (
    "the quick brown fox jumps over lazy dog keyboard suggests next word while you type model runs "
    "on phone tablet and laptop there is nothing like quiet morning with good book they thought "
    "theory was thorough though not whole truth python programming language that lets work "
    "quickly typing small screen slow so suggestions save time we don't know what they'll think "
    "of it but it's worth trying a i th to in"
)
_SMALL_WORDS = _SMALL_TEXT.split()


@pytest.fixture(scope="module")
def small_lexicon():
    return Lexicon({w: 1.0 / (i + 1) for i, w in enumerate(_SMALL_WORDS)})


@pytest.fixture(scope="module")
def keyboard_dir(tmp_path_factory):
    return make_keyboard_checkpoint(tmp_path_factory.mktemp("keyboard-lexicon"))


def _brute_force_in_lexicon(predictor, reference, text, max_tokens, k):
    """Every spelling of up to `max_tokens` tokens whose word is in the lexicon (or the user's text), scored on
    the full context by the transformers model, summed per word."""
    context, partial, bare = split_partial(text)
    classes = predictor.classes
    words = predictor.lexicon.for_text(text[: len(text) - len(partial)])
    ctx = predictor.context.token_ids(context)
    starts = np.flatnonzero(classes.starts_bare if bare else classes.starts_word)
    conts = np.flatnonzero(classes.continues_word)
    boundary = torch.from_numpy(~classes.continues_word)
    scores: Counter = Counter()
    for length in range(1, max_tokens + 1):
        batch = []
        for seq in itertools.product(starts, *([conts] * (length - 1))):
            word = "".join(classes.strings[t] for t in seq)[0 if bare else 1 :]
            if word.lower().startswith(partial.lower()) and word.lower() in words:
                batch.append((seq, word))
        if not batch:
            continue
        ids = torch.tensor([ctx + [int(t) for t in seq] for seq, _ in batch])
        with torch.no_grad():
            logprobs = reference(ids).logits.double().log_softmax(-1)
        for row, (seq, word) in enumerate(batch):
            lp = sum(logprobs[row, len(ctx) - 1 + i, t].item() for i, t in enumerate(seq))
            lp += torch.logsumexp(logprobs[row, -1][boundary], 0).item()
            scores[word.lower()] += math.exp(lp)
    return scores.most_common(k)


@pytest.mark.parametrize(
    "text",
    ["", "The ", "The quick brown ", "A keyboard sug", "They thought the th", "We don't kno", "The zorb and the zo"],
)
def test_search_over_the_lexicon_equals_brute_force(keyboard_dir, small_lexicon, text):
    from transformers import GPT2LMHeadModel

    reference = GPT2LMHeadModel.from_pretrained(keyboard_dir, dtype=torch.float32).eval()
    max_tokens = 2 if not split_partial(text)[1] else 3
    exact = Predictor(keyboard_dir, beam_width=None, max_word_tokens=max_tokens, k=5, lexicon=small_lexicon)
    got = [(s.word.lower(), s.probability) for s in exact.suggest(text)]
    want = _brute_force_in_lexicon(exact, reference, text, max_tokens, 5)
    assert [w for w, _ in got] == [w for w, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-4)
    assert all(w in small_lexicon or w in exact.lexicon.for_text(text) for w, _ in got)


def test_default_beam_over_the_lexicon_fills_k_with_real_words(keyboard_dir, small_lexicon):
    """The index steers the beam: with the lexicon the next words are 3 real words even where the random model's
    own best spellings are not words at all, and completions are words of the lexicon or of the user's text."""
    predictor = Predictor(keyboard_dir, lexicon=small_lexicon)
    for text in (s[:cut] for s in SENTENCES for cut in (0, 4, 10, 17)):
        shown = [s.word for s in predictor.suggest(text)]
        partial = split_partial(text)[1]
        words = predictor.lexicon.for_text(text[: len(text) - len(partial)])
        if not partial:
            assert len(shown) == 3, (text, shown)
        assert all(w.lower() in words and w.lower().startswith(partial.lower()) for w in shown), (text, shown)


def test_blend_formula_by_hand():
    mix = Blend(lexicon=0.5, ngram=0.2)
    model, unigram, ngram = {"a": 0.5, "b": 0.1}, {"a": 0.01, "c": 0.3}, {"c": 0.5}
    scores = mix.score(model, unigram, ngram, ["a", "b", "c"])
    raw = {
        "a": math.sqrt(0.5 * 0.8 * 0.01),
        "b": math.sqrt(0.1 * 1e-12),
        "c": math.sqrt(1e-12 * (0.8 * 0.3 + 0.2 * 0.5)),
    }
    assert scores == pytest.approx({w: v / sum(raw.values()) for w, v in raw.items()})
    # where the n-gram has not seen the context, the prior is the lexicon's alone
    alone = mix.score(model, unigram, {}, ["a", "b"])
    raw = {"a": math.sqrt(0.5 * 0.01), "b": math.sqrt(0.1 * 1e-12)}
    assert alone == pytest.approx({w: v / sum(raw.values()) for w, v in raw.items()})


# --- the bundled keyboard, as a new user gets it -----------------------------------------------------------

EXAMPLES = [  # the issue's four, then our own
    ("I will see you tomor", "tomorrow"),
    ("This license is provided without warr", "warranty"),
    ("Happy birth", "birthday"),
    ("I am going to the sto", "store"),
    ("Thank you for your hel", "help"),
    ("See you next wee", "week"),
    ("She is my best fri", "friend"),
    ("Good morn", "morning"),
    ("Happy new ye", "year"),
    ("The weather is nice tod", "today"),
    ("Let me know if you have any ques", "questions"),
    ("Please send me the docu", "document"),
    ("We had dinner at a restau", "restaurant"),
    ("What time is the meet", "meeting"),
    ("Can you call me when you get ho", "home"),
    ("I need to buy some groc", "groceries"),
    ("Python is a progr", "programming"),
]


@pytest.fixture(scope="module")
def bundled():
    return Predictor()


@pytest.mark.parametrize(("text", "word"), EXAMPLES)
def test_the_issues_examples(bundled, text, word):
    shown = [s.word for s in bundled.suggest(text)]
    assert word in shown, shown


def test_a_built_lexicon_is_kept_in_the_users_cache_and_read_back(tmp_path, monkeypatch):
    """The second start-up reads the lexicon the first built (the same words, frequencies and forms); a cache file
    that cannot be read is rebuilt without a word, and another training text is another entry."""
    from ondevice.keyboard import lexicon

    monkeypatch.setenv("ONDEVICE_CACHE", str(tmp_path))
    training = tmp_path / "train.txt"
    training.write_text("\n".join(SENTENCES * 10) + "\nOur Frobnicator frobnicates. The Frobnicator is fast.\n" * 6)
    lexicon._cached_lexicon.cache_clear()
    built = Lexicon.english_words(training)
    files = list((tmp_path / "lexicon").glob("*.json.gz"))
    assert len(files) == 1
    lexicon._cached_lexicon.cache_clear()
    monkeypatch.setattr(lexicon, "english_frequencies", lambda: pytest.fail("built again instead of read"))
    read = Lexicon.english_words(training)
    assert read.keys == built.keys and read.frequency == built.frequency and read.forms == built.forms
    assert read.form("frobnicator") == "Frobnicator"
    monkeypatch.undo()
    monkeypatch.setenv("ONDEVICE_CACHE", str(tmp_path))
    files[0].write_bytes(b"not gzip")
    lexicon._cached_lexicon.cache_clear()
    assert Lexicon.english_words(training).frequency == built.frequency
    training.write_text(training.read_text() + "One more line.\n")
    lexicon._cached_lexicon.cache_clear()
    Lexicon.english_words(training)
    assert len(list((tmp_path / "lexicon").glob("*.json.gz"))) == 2
    lexicon._cached_lexicon.cache_clear()
