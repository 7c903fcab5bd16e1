"""Write `ondevice/keyboard/data/names.txt`: the English words whose written form is capitalised (names, days,
months, nationalities, acronyms), for the keyboard's case rules.

    python -m training.names

Source: Debian's `wamerican` (SCOWL, size 50; permissive licence, quoted in the written file's header). A word is
kept when SCOWL lists it only with a capital ("London", "Monday", "BBC"; not "Bill", which also has "bill")
and it is common enough to be in the keyboard's lexicon (wordfreq Zipf frequency >= 3, the lexicon's own
threshold). Deterministic for a given wamerican and wordfreq."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from ondevice.keyboard.lexicon import MIN_ZIPF

OUT = Path(__file__).resolve().parent.parent / "ondevice" / "keyboard" / "data" / "names.txt"
WORD_LIST = Path("usr/share/dict/american-english")


def capitalised_words(word_list: list[str], min_zipf: float = MIN_ZIPF) -> list[str]:
    import wordfreq

    words = {w for w in word_list if w and "'" not in w}
    lower = {w for w in words if w[:1].islower()}
    forms: dict[str, str] = {}
    for word in sorted(words):
        if word[:1].isupper() and word.lower() not in lower and wordfreq.zipf_frequency(word, "en") >= min_zipf:
            # "Co"/"CO", "Al"/"AL": the capitalised form, not the acronym, when SCOWL has both
            key = word.lower()
            if key not in forms or (forms[key].isupper() and not word.isupper()):
                forms[key] = word
    return sorted(forms.values(), key=str.lower)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "wamerican"], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("wamerican_*.deb"))
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        word_list = (Path(tmp) / "root" / WORD_LIST).read_text(encoding="utf-8").splitlines()
        copyright_text = (Path(tmp) / "root/usr/share/doc/wamerican/copyright").read_text(encoding="utf-8")
    names = capitalised_words(word_list)
    start, end = copyright_text.index("  Copyright 2000"), copyright_text.index("express or implied warranty.")
    notice = copyright_text[start:end]
    lines = [" ".join(names[i : i + 12]) for i in range(0, len(names), 12)]
    body = "\n".join(lines)
    header = (
        f"Capitalised English words (names, days, months, nationalities, acronyms): where the lexicon\n"
        f"says a word is written with a capital. Written by `python -m training.names` from {deb.name}\n"
        f"(sha256:{sha}),\n"
        f"the words SCOWL lists only capitalised that wordfreq rates common (Zipf >= {MIN_ZIPF}).\n\n"
        f"SCOWL's notice:\n\n{notice}express or implied warranty."
    )
    comments = "\n".join(f"# {line}".rstrip() for line in header.splitlines())
    OUT.write_text(comments + "\n" + body + "\n")


if __name__ == "__main__":
    main()
