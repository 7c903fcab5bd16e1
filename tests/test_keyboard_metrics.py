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


def test_a_phrase_is_picked_with_one_key_and_its_words_cost_nothing():
    def phrases(text: str) -> list[Suggestion]:
        if text == "See you ":
            return [Suggestion("to", 0.5), Suggestion("soon", 0.2)]
        return [Suggestion("you soon", 0.4), Suggestion("to", 0.3)] if text.endswith("See ") else []

    report = evaluate("scripted", phrases, ["See you soon, Sam"]).summary()
    # "See": 3 keys, " " 1; "you soon" picked before a letter: 1 key for both words and no space (a comma
    # follows); ", Sam": 5 keys. 10 of 17.
    assert report["ksr3"] == pytest.approx(1 - 10 / 17)
    assert (report["phrase_picks"], report["phrase_words"]) == (1, 1)
    # the word figures still count every word: "you" was not shown alone, "soon" was after "See you "
    assert report["words"] == 4 and report["next_word_acc3"] == pytest.approx(1 / 4)


def test_a_phrase_the_text_does_not_go_on_with_is_not_picked():
    def wrong_phrase(text: str) -> list[Suggestion]:
        return [Suggestion("you there", 0.4), Suggestion("you", 0.3)] if text == "See " else []

    # "you thereabouts": the phrase's words match only as far as "you"; "you" alone is picked (1 key and its space)
    report = evaluate("scripted", wrong_phrase, ["See you thereabouts"]).summary()
    assert report["phrase_picks"] == 0
    assert report["ksr3"] == pytest.approx(1 - (4 + 1 + 11) / 19)


def test_phrase_extension_stops_at_its_probability_and_length():
    from ondevice.keyboard.phrases import PhraseRule, extend

    chain = {(1,): ("you", 0.8, (2,)), (1, 2): ("soon", 0.5, (3,)), (1, 2, 3): ("then", 0.9, (4,))}
    assert extend((1,), 0.9, chain.get, PhraseRule(0.3, 3)) == (["you", "soon"], pytest.approx(0.36))
    assert extend((1,), 0.9, chain.get, PhraseRule(0.3, 2)) == (["you"], pytest.approx(0.72))
    assert extend((1,), 0.9, chain.get, PhraseRule(0.4, 4)) == (["you"], pytest.approx(0.72))
    assert extend((1,), 0.3, chain.get, PhraseRule(0.3, 3)) is None
    assert extend((5,), 0.9, chain.get, PhraseRule(0.1, 3)) is None  # no next word
    assert PhraseRule.from_settings(None) is None and PhraseRule.from_settings(False) is None
    assert PhraseRule.from_settings(True) == PhraseRule()
    assert PhraseRule.from_settings({"min_probability": 0.2}) == PhraseRule(0.2)


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
