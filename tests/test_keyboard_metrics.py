"""The n-gram baseline and the evaluation metrics, against values worked out by hand."""

from __future__ import annotations

import pytest

from ondevice.keyboard.beam import Suggestion
from ondevice.keyboard.evaluate import evaluate
from ondevice.keyboard.ngram import NGramModel
from ondevice.keyboard.words import split_partial

CORPUS = ["the cat sat", "the cat ran", "the dog sat"]


def _pairs(suggestions):
    return [(s.word, pytest.approx(s.probability)) for s in suggestions]


def test_ngram_counts_and_backoff_by_hand():
    model = NGramModel.train(CORPUS)
    # after "the": cat 2/3, dog 1/3 (trigram context ("<s>", "the"))
    assert _pairs(model.suggest("the ")) == [("cat", 2 / 3), ("dog", 1 / 3), ("the", pytest.approx(3 / 9 * 0.4 * 0.4))]
    # after "the cat": sat 1/2, ran 1/2 (trigram), then the unigram level with weight 0.4^2
    assert [s.word for s in model.suggest("the cat ")][:2] == ["ran", "sat"] or [
        s.word for s in model.suggest("the cat ")
    ][:2] == ["sat", "ran"]
    # "a cat" was never seen: back off to the bigram ("cat",) with weight 0.4: sat and ran at 0.4 * 1/2 each
    assert {(s.word, round(s.probability, 6)) for s in model.suggest("a cat ", k=2)} == {("sat", 0.2), ("ran", 0.2)}
    # completion of "d" after "the": only "dog" (trigram)
    assert model.suggest("the d", k=1)[0].word == "dog"
    # capital typed by the user is kept
    assert model.suggest("The C", k=1)[0].word == "Cat"


def test_metrics_by_hand_on_a_scripted_suggester():
    def always_hello(text: str) -> list[Suggestion]:
        return [Suggestion("hello", 1.0), Suggestion("there", 0.5)]

    report = evaluate("scripted", always_hello, ["hello world"]).summary()
    assert report["words"] == 2
    assert report["next_word_acc1"] == 0.5  # "hello" yes, "world" no
    assert report["next_word_acc3"] == 0.5
    # "hello": picked before any letter (1 key, the space comes with it); "world": 5 keys. 11 keys without.
    assert report["ksr3"] == pytest.approx(1 - 6 / 11)
    # completion after 1-3 letters: "hello" is shown, "world" never
    assert report["completion_acc3_after_1"] == report["completion_acc3_after_3"] == 0.5


def test_a_pick_before_punctuation_does_not_save_a_space():
    def knows(text: str) -> list[Suggestion]:
        return [Suggestion("Hi", 1.0)]

    report = evaluate("scripted", knows, ["Hi, you"]).summary()
    # "Hi": 1 key; ", " typed (2 keys); "you": 3 keys -> 6 of 7
    assert report["ksr3"] == pytest.approx(1 - 6 / 7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The quick bro", ("The quick", "bro", False)),
        ("The quick ", ("The quick", "", False)),
        ("", ("", "", True)),
        ("   ", ("", "", True)),
        ("(se", ("(", "se", True)),
        ("I don't kn", ("I don't", "kn", False)),
        ("3rd", ("3rd", "", False)),
        ("emoji 😀", ("emoji 😀", "", False)),
    ],
)
def test_split_partial(text, expected):
    assert split_partial(text) == expected
