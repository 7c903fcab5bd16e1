"""The bundled keyboard model on everyday English: CI re-runs the model card's fixed everyday subset (held-out
WordNet usage examples, never trained on) and fails if next-word Acc@3 or KSR@3 falls more than 2 points below
the recorded figures, or if the model stops beating the n-gram baseline on keystroke savings."""

from __future__ import annotations

import json

import pytest

from bundled_models import keyboard_gpt2_path
from ondevice.keyboard import Predictor
from ondevice.keyboard.report import evaluate_file
from tests.keyboard_fixtures import RecordingPredictor, assert_real_words_with_allowed_capitals
from tests.test_bundled_keyboard_model import ALLOWED_DROP

BUNDLE = keyboard_gpt2_path()


@pytest.fixture(scope="module")
def everyday_subset_evaluation():
    recorded = json.loads((BUNDLE / "evaluation.json").read_text())
    predictor = RecordingPredictor(Predictor("keyboard-gpt2"))
    live = evaluate_file(predictor, BUNDLE / "heldout-everyday.txt", recorded["ci_subset_everyday_lines"])
    return recorded["ci_subset_everyday"], live, predictor


def test_everyday_english_has_not_regressed_from_the_model_card(everyday_subset_evaluation):
    recorded, live, _ = everyday_subset_evaluation
    for metric in ("next_word_acc3", "ksr3"):
        assert live["model"][metric] >= recorded["model"][metric] - ALLOWED_DROP, metric
    assert live["model"]["ksr3"] > live["ngram"]["ksr3"]


def test_the_replay_shows_real_words_with_allowed_capitals(everyday_subset_evaluation):
    """Every word the replay showed: sentence starts, names and the user's own words in everyday English."""
    *_, predictor = everyday_subset_evaluation
    assert assert_real_words_with_allowed_capitals(predictor.shown, predictor.lexicon) > 5_000

