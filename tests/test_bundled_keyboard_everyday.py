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
