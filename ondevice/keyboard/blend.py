"""Words the model cannot spell well: the model's word probabilities combined with a count-based prior, the
lexicon's frequencies (and the n-gram baseline's, where it knows the context).

For a candidate word w after a context c (every candidate agrees with the letters typed, so the combination
ranks completions as it ranks next words), a product of experts, weighted in log space:

    score(w) ∝ P_model(w | c) ^ (1 - lexicon) · P_prior(w | c) ^ lexicon
    P_prior(w | c) = (1 - ngram·known) · P_lexicon(w) + ngram·known · P_ngram(w | c)
    final(w) = (1 - user·learned) · score(w) + user·learned · P_user(w | c)

- P_model: the word search's probability (`beam.search_words`, summed over the word's spellings); for a
  candidate the search did not reach (longer than its 4 tokens, as " warranty" is in the bundled model's
  vocabulary, or pruned), the probability of the tokenizer's own spelling of it (`beam.score_spellings`);
  `FLOOR` where the model has no spelling of it at all;
- P_lexicon: (1 - own_text) · `Lexicon.frequency` (general English mixed with the model's training text) +
  own_text · the word's share of the words typed so far in this text (a cache model: a name the user typed
  comes back even where the model cannot spell it); `FLOOR` for a word of neither;
- P_ngram: the n-gram baseline's relative frequency of w after the last one or two words, at the longest
  context it has seen (`NGramModel.known_next`); known = 1 where it has seen at least the last word, else 0;
- P_user: what the keyboard learned from its user (`learning.UserStore.known_next`: their bigrams after the last
  word, else their unigram); learned = 1 where it has a candidate for the typed letters, else 0. Interpolated with
  the normalised product rather than inside it, as a cache model is: what a user types often after a word is
  offered after it even where the model and English find it rare. Its candidates are not scored by the model (a
  word it alone proposes has score 0 in the product): learning costs no model call per keystroke.

Why a product and not a sum: the two experts differ by orders of magnitude (a 5M-parameter documentation
model gives "warranty" 1e-9, English uses it 4e-6 of the time); a sum is decided by whichever is larger, a
product keeps each one's preferences among the candidates: "warrant" and "warranty" (model) over "warriors"
and "warren" (frequent in English, 1e-11 after "provided without" for the model).

Candidates: the model's words, the lexicon's most frequent words that start with the typed letters, the
user's own words that do, and the n-gram's.
The scores are normalised over the candidates (the `probability` a suggestion carries). The weights are the
model's (`keyboard.json` beside a bundled model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ondevice.keyboard.beam import Suggestion

FLOOR = 1e-12


@dataclass(frozen=True)
class Blend:
    lexicon: float = 0.0  # weight (log space) of the count-based prior against the model
    ngram: float = 0.0  # share of the n-gram baseline in the prior, where it knows the context
    own_text: float = 0.1  # share of the user's own text in the lexicon's unigram
    candidates: int = 8  # words taken from each source before combining
    user: float = 0.3  # weight of what was learned from the user (`learning.py`), where it has a candidate

    def score(
        self, model: dict[str, float], unigram: dict[str, float], ngram: dict[str, float], candidates: list[str]
    ) -> dict[str, float]:
        """Normalised scores of `candidates` (lower-case words) from each source's probabilities."""
        share = self.ngram if ngram else 0.0
        logs = {}
        for w in candidates:
            prior = (1 - share) * unigram.get(w, 0.0) + share * ngram.get(w, 0.0)
            logs[w] = (1 - self.lexicon) * math.log(max(model.get(w, 0.0), FLOOR)) + self.lexicon * math.log(
                max(prior, FLOOR)
            )
        top = max(logs.values(), default=0.0)
        total = sum(math.exp(v - top) for v in logs.values())
        return {w: math.exp(v - top) / total for w, v in logs.items()}

    def with_user(self, scores: dict[str, float], user: dict[str, float]) -> dict[str, float]:
        """The blend's scores interpolated with the user's own model (a cache model), over both's candidates: a
        word only the user's model has gets its share of it alone (no model call to score it); nothing changes
        where it has no candidate."""
        if not user:
            return scores
        return {w: (1 - self.user) * scores.get(w, 0.0) + self.user * user.get(w, 0.0) for w in {*scores, *user}}


def blend(
    found: list[Suggestion],
    partial: str,
    words,
    ngram_model,
    context: str,
    mix: Blend,
    k: int,
    score_missing=None,
    user_model=None,
) -> list[tuple[str, float]]:
    """The top `k` (lower-case word, score) after combining: `found` from the word search over `words` (a
    `lexicon.WordSet`), the lexicon's and the n-gram's candidates for the typed `partial`. `score_missing(words)`
    gives the model's probability of candidates the search did not find."""
    prefix = partial.lower()
    model: dict[str, float] = {}
    for s in found:
        model[s.word.lower()] = model.get(s.word.lower(), 0.0) + s.probability
    lexicon = words.lexicon
    candidates = list(model)
    if mix.lexicon > 0:
        candidates += [*lexicon.most_frequent(prefix, mix.candidates), *words.typed_words(prefix)]
    ngram = {}
    if mix.ngram > 0 and ngram_model is not None:
        ngram = {w: p for w, p in ngram_model.known_next(context, prefix, mix.candidates).items() if w in words}
        candidates += [w for w in ngram if w not in candidates]
    candidates = [w for w in dict.fromkeys(candidates) if len(w) >= len(prefix) and w in words]
    missing = [w for w in candidates if w not in model]
    if missing and score_missing is not None:
        model.update(score_missing(missing))
    typed = sum(words.user_counts.values()) or 1
    unigram = {
        w: (1 - mix.own_text) * lexicon.frequency.get(w, 0.0) + mix.own_text * words.user_counts[w] / typed
        for w in candidates
    }
    scores = mix.score(model, unigram, ngram, candidates)
    if mix.user > 0 and user_model is not None:
        user = {w: p for w, p in user_model.known_next(context, prefix, mix.candidates).items() if w in words}
        scores = mix.with_user(scores, user)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k]
