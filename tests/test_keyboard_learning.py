"""What the keyboard learns from its user (`ondevice/keyboard/learning.py`): it learns words, their case and the pairs
the user types, and suggests them; it forgets on request; it stays within its bounds; a corrupt store is reset with
a one-line warning; the commands show, export and forget it, and --no-learn leaves it out."""

from __future__ import annotations

import json

import pytest

from ondevice.keyboard import Predictor
from ondevice.keyboard import learning as learning_module
from ondevice.keyboard.learning import UserStore
from tests.cli import run_cli

LINES = [
    "I met Siobhan at the Frobnicator meetup.",
    "Siobhan said the Frobnicator meetup was fun.",
    "See you at the Frobnicator meetup tomorrow",
]


@pytest.fixture(scope="module")
def predictor():
    return Predictor("keyboard-gpt2")


def _words(predictor, text):
    return [s.word for s in predictor.suggest(text)]


def test_it_learns_words_their_case_and_pairs():
    store = UserStore()
    for line in LINES:
        store.learn(line)
    assert store.words["siobhan"] == 2 and store.forms["siobhan"] == "Siobhan"
    assert store.words["frobnicator"] == 3 and store.forms["frobnicator"] == "Frobnicator"
    assert store.pairs["frobnicator\tmeetup"] == 3
    assert "meetup\tsiobhan" not in store.pairs  # no pair across a sentence end
    assert "i" not in store.forms  # "I" first in its sentence: the capital is the sentence's, not a form
    assert store.known_next("at the Frobnicator ", "", 3) == {"meetup": 1.0}
    assert set(store.known_next("Hello ", "s", 3)) == {"siobhan", "see", "said"}  # unseen context: the unigram


def test_suggestions_blend_what_was_learned(predictor):
    """Before: the bundled model knows neither the name nor the pair. After learning the lines: the name is offered
    from two letters, in the user's case, and "meetup" after "Frobnicator"."""
    predictor.learning = UserStore()
    try:
        assert "Siobhan" not in _words(predictor, "I met Si")
        assert "meetup" not in _words(predictor, "at the Frobnicator ")
        for line in LINES:
            predictor.learn(line)
        assert "Siobhan" in _words(predictor, "I met Si")
        assert _words(predictor, "at the Frobnicator ")[0] == "meetup"
        predictor.learning.forget("siobhan")
        assert "Siobhan" not in _words(predictor, "I met Si")
    finally:
        predictor.learning = None


def test_the_store_stays_within_its_bounds(monkeypatch):
    monkeypatch.setattr(learning_module, "MAX_WORDS", 50)
    monkeypatch.setattr(learning_module, "MAX_PAIRS", 60)
    store = UserStore()
    store.learn(" ".join(["often"] * 30))
    for i in range(400):
        store.learn(f"word{i}x filler{i % 7}y")
        assert len(store.words) <= 50 and len(store.pairs) <= 60
    assert "often" in store.words  # the frequent word survives the pruning
    assert all(k in store.words for k in store.forms)
    assert all(w in store.words for pair in store.pairs for w in pair.split("\t"))


def test_a_store_round_trips_and_a_corrupt_one_is_reset_with_one_line(tmp_path):
    path = tmp_path / "learned.json"
    store = UserStore(path)
    store.learn(LINES[0])
    store.save()
    again = UserStore.load(path)
    assert again.words == store.words and again.forms == store.forms and again.pairs == store.pairs
    for bad in ("not json", json.dumps({"format": "other"}), json.dumps({"format": learning_module.FORMAT,
                "words": {"a": -1}, "forms": {}, "pairs": {}})):  # fmt: skip
        path.write_text(bad)
        said: list[str] = []
        reset = UserStore.load(path, warn=said.append)
        assert len(reset) == 0 and len(said) == 1 and "\n" not in said[0] and str(path) in said[0]


def test_the_commands_show_export_and_forget_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ONDEVICE_DATA", str(tmp_path))
    store = UserStore.load()
    for line in LINES:
        store.learn(line)
    store.save()
    shown = run_cli("learned", "show")
    assert shown.exit_code == 0 and "Frobnicator  3" in shown.output and "frobnicator meetup  3" in shown.output
    exported = tmp_path / "mine.json"
    assert run_cli("learned", "export", str(exported)).exit_code == 0
    assert json.loads(exported.read_text())["words"]["siobhan"] == 2
    assert run_cli("learned", "export", str(exported)).exit_code == 2  # never overwrites
    assert run_cli("learned", "forget", "Siobhan").exit_code == 0
    assert "siobhan" not in UserStore.load().words and "frobnicator" in UserStore.load().words
    assert run_cli("learned", "forget").exit_code == 0
    assert len(UserStore.load()) == 0
    assert run_cli("learned", "remember").exit_code == 2


def test_predict_reads_the_store_unless_no_learn(tmp_path, monkeypatch):
    monkeypatch.setenv("ONDEVICE_DATA", str(tmp_path))
    store = UserStore.load()
    for line in LINES:
        store.learn(line)
    store.save()
    with_store = run_cli("predict", "at the Frobnicator ")
    without = run_cli("predict", "at the Frobnicator ", "--no-learn")
    assert with_store.output.split()[0] == "meetup" and "meetup" not in without.output.split()
