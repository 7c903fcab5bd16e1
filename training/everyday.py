"""The everyday-English held-out set of the keyboard model: usage examples of WordNet 3.0, the sentences its
lexicographers wrote to show words in use ("he gave evidence for the defense", "I'll see you tomorrow").

    python -m training.everyday --out bundled_models/keyboard-gpt2/heldout-everyday.txt

Source: Debian's `wordnet-base` (WordNet 3.0, Princeton University; the WordNet 3.0 licence permits use,
copying, modification and distribution with its notice, quoted in the model card). No WordNet text is in the
model's training data. Kept: examples of 6 to 30 words of plain prose (letters, digits, spaces and , . ' ? ! ;
-), written as sentences (a capital first letter, a full stop where none ends them); a fixed sample by hash
of the text, deduplicated."""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

DEB_PACKAGE = "wordnet-base"
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_PLAIN = re.compile(r"[A-Za-z0-9 ,.'?!;\-]+")
KEEP_EVERY = 40  # about 1,200 of WordNet's 48,000 examples


def examples(wordnet_dir: Path) -> list[str]:
    """Every usage example of the WordNet database files in `wordnet_dir` (the quoted parts of the glosses)."""
    found = []
    for name in DATA_FILES:
        for line in (wordnet_dir / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            gloss = line.split("|", 1)[1]
            found += [m.strip() for m in re.findall(r'"([^"]+)"', gloss)]
    return found


def sentences(raw: list[str], part: int = 0) -> list[str]:
    """The sample `part` (0: the held-out set; 1: development text for the blend weights, disjoint from it)."""
    kept, seen = [], set()
    for example in raw:
        words = example.split()
        if not 6 <= len(words) <= 30 or not _PLAIN.fullmatch(example) or "--" in example:
            continue
        sentence = example[0].upper() + example[1:]
        if sentence[-1] not in ".?!":
            sentence += "."
        if sentence.lower() in seen:
            continue
        seen.add(sentence.lower())
        if hashlib.sha256(sentence.encode()).digest()[0] % KEEP_EVERY == part:
            kept.append(sentence)
    return sorted(kept, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def fetch_wordnet(workdir: Path) -> tuple[Path, str]:
    subprocess.run(["apt-get", "download", DEB_PACKAGE], cwd=workdir, check=True, capture_output=True)
    deb = next(workdir.glob(f"{DEB_PACKAGE}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    return workdir / "root" / "usr/share/wordnet", f"{deb.name} sha256:{sha}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bundled_models/keyboard-gpt2/heldout-everyday.txt"))
    parser.add_argument("--wordnet-dir", type=Path, default=None, help="an unpacked usr/share/wordnet")
    parser.add_argument("--dev-out", type=Path, default=None, help="also write development sentences here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = "local copy"
        directory = args.wordnet_dir
        if directory is None:
            directory, source = fetch_wordnet(Path(tmp))
        raw = examples(directory)
        kept = sentences(raw)
        if args.dev_out:
            args.dev_out.parent.mkdir(parents=True, exist_ok=True)
            args.dev_out.write_text("\n".join(sentences(raw, part=1)) + "\n")
    args.out.write_text("\n".join(kept) + "\n")
    print(f"{len(kept)} sentences, {sum(len(s.split()) for s in kept)} words from {source} -> {args.out}")


if __name__ == "__main__":
    main()
