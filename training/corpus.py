"""The training corpus of the bundled keyboard model: English prose from the Python 3.11
documentation as Debian ships it (package python3.11-doc, PSF License 2.0, which allows derived
works such as a trained model).

Why this text: of the English prose reachable from the package registries, it is the largest body
of consistently edited, modern, permissively licensed writing (tutorial, HOWTOs, FAQ, library
reference). Code blocks, tables and navigation are dropped; paragraphs and list items are kept.
Documents, not paragraphs, are split into train and held-out, so no held-out sentence has a twin
in training."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

DEB_PACKAGE = "python3.11-doc"
HTML_ROOT = Path("usr/share/doc/python3.11/html")
SKIPPED_DIRS = ("_static", "_images", "_sources", "_downloads", "genindex", "py-modindex", "search")
HELD_OUT_EVERY = 20  # one document in 20 is held out


class _ProseExtractor(HTMLParser):
    """Collect text of <p>, <li> and <dd> inside the page body, skipping code and tables."""

    BLOCKS = frozenset({"p", "li", "dd"})
    SKIP = frozenset({"pre", "table", "script", "style", "nav"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._in_body = 0
        self._skip = 0
        self._block: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("role") == "main":
            self._in_body = self._depth + 1
        self._depth += tag not in {"br", "img", "hr", "meta", "link", "input", "wbr"}
        classes = (attrs.get("class") or "").split()
        if tag in self.SKIP or "highlight" in classes or "headerlink" in classes:
            self._skip += 1
        elif tag in self.BLOCKS and self._in_body and self._block is None and not self._skip:
            self._block = []

    def handle_endtag(self, tag):
        if tag in self.SKIP or (self._skip and tag in {"div", "a"}):
            self._skip = max(0, self._skip - 1) if tag in self.SKIP or self._skip else 0
        if tag in self.BLOCKS and self._block is not None:
            self.paragraphs.append(" ".join("".join(self._block).split()))
            self._block = None
        self._depth -= 1
        if self._in_body and self._depth < self._in_body:
            self._in_body = 0

    def handle_data(self, data):
        if self._block is not None and not self._skip:
            self._block.append(data)


# Identifiers, calls, operators and paths mark code; plain parentheses are ordinary prose.
_CODE_LIKE = re.compile(r"[_{}\[\]=<>/\\|`]|\(\)|\w\.\w|^[-*]|::")


def is_prose(paragraph: str) -> bool:
    """A paragraph of sentences, not a signature, a listing or a link dump."""
    words = paragraph.split()
    if len(words) < 8 or not paragraph[0].isupper():
        return False
    code_like = sum(bool(_CODE_LIKE.search(w)) for w in words)
    return code_like <= 0.15 * len(words) and paragraph.rstrip()[-1:] in ".:!?"


def page_paragraphs(html: str) -> list[str]:
    parser = _ProseExtractor()
    parser.feed(html)
    return [p for p in parser.paragraphs if is_prose(p)]


def is_held_out(relative_path: str) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return digest[0] % HELD_OUT_EVERY == 0


def fetch_documentation(workdir: Path) -> tuple[Path, str]:
    """Download and unpack the Debian package without root; return (html root, 'name version sha256')."""
    subprocess.run(["apt-get", "download", DEB_PACKAGE], cwd=workdir, check=True, capture_output=True)
    deb = next(workdir.glob(f"{DEB_PACKAGE}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    return workdir / "root" / HTML_ROOT, f"{deb.name} sha256:{sha}"


def build_corpus(out_dir: Path, html_root: Path | None = None) -> dict[str, object]:
    """Write train.txt and heldout.txt (one paragraph per line) into out_dir; return their provenance."""
    with tempfile.TemporaryDirectory() as tmp:
        source = "local copy"
        if html_root is None:
            html_root, source = fetch_documentation(Path(tmp))
        train: list[str] = []
        held_out: list[str] = []
        for page in sorted(html_root.rglob("*.html")):
            relative = page.relative_to(html_root).as_posix()
            if relative.startswith(SKIPPED_DIRS):
                continue
            paragraphs = page_paragraphs(page.read_text(encoding="utf-8", errors="replace"))
            (held_out if is_held_out(relative) else train).extend(paragraphs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.txt").write_text("\n".join(train) + "\n")
    (out_dir / "heldout.txt").write_text("\n".join(held_out) + "\n")
    return {
        "source": source,
        "licence": "PSF License 2.0 (Python documentation)",
        "train_paragraphs": len(train),
        "train_words": sum(len(p.split()) for p in train),
        "heldout_paragraphs": len(held_out),
        "heldout_words": sum(len(p.split()) for p in held_out),
    }
