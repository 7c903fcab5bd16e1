"""Words the model cannot spell well: the model's word probabilities mixed with the lexicon's frequencies and,
where it has seen the context, the n-gram baseline's.

For a candidate word w after a context c (every candidate agrees with the letters typed, so the mixture ranks
completions as it ranks next words):

    score(w) = (1 - lexicon - ngram·known) · P_model(w | c) + lexicon · P_lexicon(w) + ngram · known · P_ngram(w | c)

- P_model: the word search's probability (`beam.search_words`, summed over the word's spellings); 0 for a word
  the search did not reach;
- P_lexicon: the word's unigram frequency, (1 - own_text) · `Lexicon.frequency` (general English mixed with
  the model's training text) + own_text · its share of the words typed so far in this text (a cache model: a
  name the user typed comes back even where the model cannot spell it);
- P_ngram: the n-gram baseline's relative frequency of w after the last one or two words, at the longest
  context it has seen (`NGramModel.known_next`); known = 1 where it has seen at least the last word, else 0.

Candidates: the model's words, the lexicon's most frequent words that start with the typed letters, the
user's own words that do, and the n-gram's. The weights are the model's (`keyboard.json` beside a bundled
model), chosen on development text, never on the text the model card reports."""

from __future__ import annotations

from dataclasses import dataclass

from ondevice.keyboard.beam import Suggestion


@dataclass(frozen=True)
class Blend:
    lexicon: float = 0.0  # weight of the lexicon's unigram frequency
    ngram: float = 0.0  # weight of the n-gram baseline, where it knows the context
    own_text: float = 0.1  # share of the user's own text in the lexicon's unigram
    candidates: int = 8  # words taken from each source before mixing

    def score(self, model: dict[str, float], unigram: dict[str, float], ngram: dict[str, float],
              candidates: list[str]) -> dict[str, float]:
        """Mixed scores of `candidates` (lower-case words) from each source's probabilities (lower-case keys)."""
        ngram_weight = self.ngram if ngram else 0.0
        model_weight = 1.0 - self.lexicon - ngram_weight
        return {w: model_weight * model.get(w, 0.0) + self.lexicon * unigram.get(w, 0.0)
                + ngram_weight * ngram.get(w, 0.0) for w in candidates}


def blend(found: list[Suggestion], partial: str, words, ngram_model, context: str, mix: Blend,
          k: int) -> list[tuple[str, float]]:
    """The top `k` (lower-case word, score) after mixing: `found` from the word search over `words` (a
    `lexicon.WordSet`), the lexicon's and the n-gram's candidates for the typed `partial`."""
    prefix = partial.lower()
    model = {}
    for s in found:
        model[s.word.lower()] = model.get(s.word.lower(), 0.0) + s.probability
    lexicon = words.lexicon
    candidates = list(model)
    if mix.lexicon > 0:
        candidates += [*lexicon.most_frequent(prefix, mix.candidates), *words.user_words(prefix)]
    ngram = {}
    if mix.ngram > 0 and ngram_model is not None:
        ngram = {w: p for w, p in ngram_model.known_next(context, prefix, mix.candidates).items() if w in words}
        candidates += [w for w in ngram if w not in candidates]
    candidates = [w for w in dict.fromkeys(candidates) if len(w) >= len(prefix) and w in words]
    typed = sum(words.user_counts.values()) or 1
    unigram = {w: (1 - mix.own_text) * lexicon.frequency.get(w, 0.0) + mix.own_text * words.user_counts[w] / typed
               for w in candidates}
    scores = mix.score(model, unigram, ngram, candidates)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k]
