"""What the keyboard learns from its user: the words they type, how they write them, and which word follows which.

Kept on this machine only, in the user's own data folder (`store_path`: $ONDEVICE_DATA, else $XDG_DATA_HOME or
~/.local/share, then ondevice/learned.json), never sent anywhere; `ondevice learned show | export | forget` read,
copy and clear it, `--no-learn` leaves it alone. Bounded: at most MAX_WORDS words and MAX_PAIRS word pairs; past
that, the rarest are dropped (the most recent win ties), so the file stays under ~2 MB.

How suggestions use it (`blend.py`): as one more expert of the count-based prior, the user's own bigram model,

    P_user(w | c) = count(prev, w) / count(prev, .)   where the user has typed a word after c's last word `prev`
                  = count(w) / count(.)               else (their unigram)

mixed into the prior with the weight `Blend.user` wherever it has a candidate for the typed letters. A word the user
typed becomes a word of the search's index (in the form they wrote it mid-sentence), so that a name the model cannot
spell is offered once it has been typed. A store that cannot be read (a corrupt or foreign file) is replaced by an
empty one with a one-line warning, never an error."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ondevice.keyboard.words import WORD

MAX_WORDS = 20_000
MAX_PAIRS = 60_000
FORMAT = "ondevice-learned-1"
_SENTENCE_END = frozenset(".!?")


def store_path() -> Path:
    """Where the store lives: $ONDEVICE_DATA/learned.json, else ($XDG_DATA_HOME or ~/.local/share)/ondevice/."""
    root = os.environ.get("ONDEVICE_DATA")
    if root:
        return Path(root) / "learned.json"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ondevice" / "learned.json"


class UserStore:
    def __init__(self, path: Path | None = None):
        """An empty store that saves to `path` (None: kept in memory only, as `--eval --learn` does)."""
        self.path = path
        self.words: Counter = Counter()  # lower-case word -> times typed
        self.forms: dict[str, str] = {}  # lower-case word -> how it was last written mid-sentence, where not lower
        self.pairs: Counter = Counter()  # "prev\tword" (lower case) -> times typed in a row
        self._after: dict[str, Counter] | None = None
        self._ranked: list[tuple[str, int]] | None = None
        self._extra: tuple[int, dict[str, str]] | None = None

    @classmethod
    def load(cls, path: Path | None = None, warn=None) -> UserStore:
        """The store at `path` (default `store_path()`); a missing file is an empty store, an unreadable one too,
        with one line to `warn` (default: stderr)."""
        path = path or store_path()
        store = cls(path)
        if not path.is_file():
            return store
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {FORMAT!r}")
            words, forms, pairs = data["words"], data["forms"], data["pairs"]
            if not all(isinstance(v, int) and v > 0 for v in (*words.values(), *pairs.values())):
                raise ValueError("counts must be positive integers")
            if not all(isinstance(v, str) and v.lower() in words for v in forms.values()):
                raise ValueError("a form of a word it does not hold")
            store.words, store.forms, store.pairs = Counter(words), dict(forms), Counter(pairs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            say = warn or (lambda line: print(line, file=sys.stderr))
            say(f"warning: {path}: the learned words could not be read ({exc}); starting again from an empty store")
            return cls(path)
        return store

    def learn(self, text: str) -> None:
        """Count the words of `text` (a line or more the user typed), their forms and the pairs inside sentences."""
        prev, end = None, None
        for match in WORD.finditer(text):
            word, key = match.group(0), match.group(0).lower()
            between = text[end : match.start()] if end is not None else ""
            if end is None or any(c in _SENTENCE_END or c == "\n" for c in between):
                prev = None  # a new sentence: no pair across it, and its first word's capital is not its form
            else:
                if word != key:
                    self.forms[key] = word
                elif key in self.forms:
                    del self.forms[key]
            self.words[key] += 1
            if prev is not None:
                self.pairs[f"{prev}\t{key}"] += 1
            prev, end = key, match.end()
        self._bound()
        self._changed()

    def _changed(self) -> None:
        self._after, self._ranked, self._extra = None, None, None

    def _bound(self) -> None:
        for table, limit in ((self.words, MAX_WORDS), (self.pairs, MAX_PAIRS)):
            if len(table) > limit:
                keep = dict(Counter(table).most_common(int(limit * 0.9)))  # stable: the earlier-seen of a tie first
                table.clear()
                table.update(keep)
        self.forms = {k: v for k, v in self.forms.items() if k in self.words}
        self.pairs = Counter({p: n for p, n in self.pairs.items() if all(w in self.words for w in p.split("\t"))})

    def known_next(self, context: str, prefix: str, n: int) -> dict[str, float]:
        """Up to `n` words starting with `prefix` the user typed after the last word of `context` (their shares of
        what followed it), else among all their words (shares of all they typed); {} where they typed none."""
        words = [m.group(0).lower() for m in WORD.finditer(context)]
        tail = context[context.rfind(words[-1]) + len(words[-1]) :] if words else ""
        if words and not any(c in _SENTENCE_END or c == "\n" for c in tail):
            following = self._following().get(words[-1])
            if following:
                found = _top(following.most_common(), prefix, n)
                if found:
                    return found
        if self._ranked is None:
            self._ranked = self.words.most_common()
        return _top(self._ranked, prefix, n)

    def _following(self) -> dict[str, Counter]:
        if self._after is None:
            after: dict[str, Counter] = {}
            for pair, count in self.pairs.items():
                prev, word = pair.split("\t")
                after.setdefault(prev, Counter())[word] = count
            self._after = after
        return self._after

    def save(self) -> None:
        """Write the store to its path (temporary file, then rename: never half-written)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "words": dict(self.words), "forms": self.forms, "pairs": dict(self.pairs)}
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        os.replace(f.name, self.path)

    def forget(self, word: str | None = None) -> None:
        """Forget one word (and every pair with it), or everything."""
        if word is None:
            self.words.clear()
            self.forms.clear()
            self.pairs.clear()
        else:
            key = word.lower()
            self.words.pop(key, None)
            self.forms.pop(key, None)
            self.pairs = Counter({p: n for p, n in self.pairs.items() if key not in p.split("\t")})
        self._changed()

    def __len__(self) -> int:
        return len(self.words)

    def extra_forms(self, lexicon) -> dict[str, str]:
        """The words this store adds to `lexicon`'s index (those it lacks) and every form the user wrote, as the
        form to show: lower-case word -> form."""
        if self._extra is None or self._extra[0] != id(lexicon):
            extra = {k: self.forms.get(k, k) for k in self.words if k not in lexicon} | dict(self.forms)
            self._extra = (id(lexicon), extra)
        return self._extra[1]


def _top(ranked: list[tuple[str, int]], prefix: str, n: int) -> dict[str, float]:
    """The first `n` of `ranked` (word, count), most frequent first, that start with `prefix`: their shares."""
    total = sum(c for _, c in ranked)
    found: dict[str, float] = {}
    for word, count in ranked:
        if word.startswith(prefix):
            found[word] = count / total
            if len(found) >= n:
                break
    return found
