"""Phrases: when the model is confident, the rest of a phrase offered as one suggestion, as Gmail's Smart Compose
and PhraseWriter do ("How are" -> "you doing"), accepted with one key like a word.

After the top suggestion w1 (its score s1: the blend's share among the candidates, or the model's probability
without a lexicon), the model's most probable next word w2 after the context and w1 (the word search, one word
deep, over the same word index); the phrase "w1 w2" is offered when s1 · P(w2 | context, w1) reaches
`min_probability`, and further words join while the product stays there, up to `max_words`. The phrase takes the
last of the k places only where it is more probable than the suggestion there, so w1 itself stays on offer and a
less likely phrase displaces nothing. The phrase's words are found by the model alone (the lexicon's
frequencies say nothing about what follows a word): their cost is one short search per extra word, most of it
reused from the keystroke before while the context and w1 stay the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PhraseRule:
    min_probability: float = 0.3  # of the whole phrase: s1 · P(w2 | ...) · P(w3 | ...)
    max_words: int = 3  # 2 or more; 1 turns phrases off

    @classmethod
    def from_settings(cls, settings: dict | bool | None) -> PhraseRule | None:
        """keyboard.json's "phrases": an object of these fields, true (the defaults), false or absent (none)."""
        if not settings:
            return None
        return cls(**settings) if isinstance(settings, dict) else cls()


NextWord = Callable[[tuple[int, ...]], tuple[str, float, tuple[int, ...]] | None]


def extend(
    first_tokens: Sequence[int], score: float, next_word: NextWord, rule: PhraseRule
) -> tuple[list[str], float] | None:
    """The words after the first (whose tokens after the context are `first_tokens`, whose score is `score`) while
    the phrase's probability stays at `rule.min_probability`, and that probability; None where not even one word
    joins. `next_word(tokens)` gives the most probable word after the context and `tokens`: (its form, its
    probability, its tokens), or None."""
    tokens, probability = tuple(first_tokens), score
    words: list[str] = []
    while len(words) + 1 < rule.max_words:
        found = next_word(tokens)
        if found is None or probability * found[1] < rule.min_probability:
            break
        words.append(found[0])
        probability *= found[1]
        tokens += found[2]
    return (words, probability) if words else None
