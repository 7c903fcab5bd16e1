"""The bundled keyboard model: complete, small, faithful to transformers, and as good as its model card says.

CI re-runs the model card's fixed documentation subset here (the everyday-English one in
test_bundled_keyboard_everyday.py, so that the two replays run side by side), and fails if next-word
Acc@3 or KSR@3 falls more than 2 points below the recorded figures."""

from __future__ import annotations

import pytest

from bundled_models import keyboard_gpt2_path
from ondevice.verify import verify
from tests.keyboard_fixtures import assert_not_regressed, assert_real_words_with_allowed_capitals, replay_ci_subset

BUNDLE = keyboard_gpt2_path()


def test_bundle_is_complete_and_within_25_mb():
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train.txt.gz",
        "heldout.txt",
        "heldout-everyday.txt",
        "keyboard.json",
        "training.json",
        "evaluation.json",
        "MODEL_CARD.md",
    ):
        assert (BUNDLE / name).is_file(), name
    assert (BUNDLE / "model.safetensors").stat().st_size <= 25 * 2**20


def test_bundled_model_matches_transformers():
    report = verify("keyboard-gpt2", seq_len=64)
    assert report.passed, report.comparisons


@pytest.fixture(scope="module")
def subset_evaluation():
    return replay_ci_subset("ci_subset")


def test_quality_has_not_regressed_from_the_model_card(subset_evaluation):
    recorded, live, _ = subset_evaluation
    assert_not_regressed(recorded, live)


def test_model_beats_the_ngram_baseline_and_saves_keystrokes(subset_evaluation):
    _, live, _ = subset_evaluation
    assert live["model"]["next_word_acc3"] > live["ngram"]["next_word_acc3"]
    assert live["model"]["ksr3"] >= 0.40


def test_the_replay_shows_real_words_with_allowed_capitals(subset_evaluation):
    """Every word the replay showed (each word of the subset at 0, 1, 2, 3 letters typed, and on until picked)."""
    *_, predictor = subset_evaluation
    assert predictor.lexicon is not None  # the bundled model asks for the English lexicon (keyboard.json)
    assert assert_real_words_with_allowed_capitals(predictor.shown, predictor.lexicon) > 5_000


def test_model_card_reports_both_held_out_sets():
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    assert "### Documentation" in card and "### Everyday English" in card and "n-gram baseline" in card
