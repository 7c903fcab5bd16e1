"""The bundled keyboard model on everyday English: CI re-runs the model card's fixed everyday subset (held-out
WordNet usage examples, never trained on) and fails if next-word Acc@3 or KSR@3 falls more than 2 points below
the recorded figures, or if the model stops beating the n-gram baseline on keystroke savings."""

from __future__ import annotations

import pytest

from tests.keyboard_fixtures import assert_not_regressed, assert_real_words_with_allowed_capitals, replay_ci_subset


@pytest.fixture(scope="module")
def everyday_subset_evaluation():
    return replay_ci_subset("ci_subset_everyday")


def test_everyday_english_has_not_regressed_from_the_model_card(everyday_subset_evaluation):
    recorded, live, _ = everyday_subset_evaluation
    assert_not_regressed(recorded, live)
    assert live["model"]["ksr3"] > live["ngram"]["ksr3"]


def test_the_replay_shows_real_words_with_allowed_capitals(everyday_subset_evaluation):
    """Every word the replay showed: sentence starts, names and the user's own words in everyday English."""
    *_, predictor = everyday_subset_evaluation
    assert assert_real_words_with_allowed_capitals(predictor.shown, predictor.lexicon) > 5_000


# A dozen everyday openings of our own (none from the held-out sets) and the words a person would accept next.
EVERYDAY_OPENINGS = {
    "Thanks for your ": {"help", "time", "email", "message", "letter", "support", "reply", "kindness", "call"},
    "How are ": {"you", "things", "they", "we"},
    "I'm sorry for the ": {"delay", "trouble", "inconvenience", "mess", "loss", "confusion", "mistake"},
    "See you ": {"tomorrow", "soon", "later", "then", "there", "again", "next", "tonight"},
    "Good ": {"morning", "night", "luck", "afternoon", "evening", "day", "job"},
    "What time is ": {"it"},
    "Let me ": {"know", "see", "go", "get", "think", "tell", "help", "try", "check"},
    "Can you ": {"help", "tell", "see", "do", "get", "please", "send", "give", "come", "call"},
    "I don't ": {"know", "think", "want", "have", "like", "care", "see", "understand"},
    "Have a nice ": {"day", "time", "weekend", "evening", "trip"},
    "I'm on my ": {"way", "own"},
    "It was a ": {"good", "great", "long", "nice", "pleasure", "very", "lovely"},
}
# The bar is every one of them. The documentation-trained model as shipped gets 2 ("I don't" -> know, "It was a"
# -> good; "How are" -> a, the, an): a floor against regressions, to be raised with a general-English model.
SENSIBLE_AT_LEAST = 2


def test_everyday_openings_get_sensible_next_words():
    from ondevice.keyboard import Predictor

    predictor = Predictor("keyboard-gpt2", learning=None)
    shown = {text: [s.word for s in predictor.suggest(text)] for text in EVERYDAY_OPENINGS}
    sensible = [text for text, words in shown.items() if EVERYDAY_OPENINGS[text] & set(words)]
    assert len(sensible) >= SENSIBLE_AT_LEAST, shown
