"""What each part of the keyboard adds, on development text.

    python -m training.ablation bundled_models/keyboard-gpt2 [--grid 0.3,0.5,0.7]

Development text, which no figure of the model card's evaluation uses: WordNet usage examples outside the
everyday held-out sample (`python -m training.everyday --dev-out ...`), and documentation held-out paragraphs
from `DEV_FROM` on (the card reports the paragraphs before). The variants, each on top of the one before: the
model alone (its own spellings and capitals); + the lexicon as the search's index and the case rules (blend
weights 0, 0); + the lexicon's frequencies (the model's keyboard.json lexicon weight); + the n-gram baseline
where it knows the context (`--ngram`, 0.2); + phrases where the model is confident (`phrases.py`, the
keyboard.json rule, on the shipped blend without the n-gram). `--grid` scores other lexicon weights too,
`--phrase-grid` other phrase thresholds. Writes ablation.json beside the model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ondevice.keyboard import Predictor
from ondevice.keyboard.blend import Blend
from ondevice.keyboard.evaluate import evaluate
from ondevice.keyboard.phrases import PhraseRule
from ondevice.keyboard.report import load_baseline, read_lines

EVERYDAY_DEV = Path("build/keyboard-corpus/dev-everyday.txt")  # `python -m training.everyday --dev-out`
DEV_FROM = 560  # documentation held-out lines from here on are development text


def variant(directory: Path, name: str, mix: Blend | None, ngram, phrases: PhraseRule | None = None) -> Predictor:
    if name == "model":
        return Predictor(directory, lexicon=None, phrases=None)
    return Predictor(directory, lexicon="english", blend_weights=mix or Blend(), ngram=ngram, phrases=phrases)


def score(predictor: Predictor, lines: list[str]) -> dict:
    """The replay metrics of `predictor` over `lines`, from an empty cache."""
    predictor.reset()
    return evaluate("model", predictor.suggest, lines, k=predictor.k).summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--docs-lines", type=int, default=25)
    parser.add_argument("--everyday-lines", type=int, default=100)
    parser.add_argument("--ngram", type=float, default=0.2)
    parser.add_argument("--grid", default="", help="more lexicon weights to score, comma-separated")
    parser.add_argument("--phrase-grid", default="", help="more phrase thresholds to score, comma-separated")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    directory = args.directory
    dev = {
        "docs": read_lines(directory / "heldout.txt")[DEV_FROM : DEV_FROM + args.docs_lines],
        "everyday": read_lines(EVERYDAY_DEV, args.everyday_lines),
    }
    ngram = load_baseline(Predictor(directory, lexicon=None))
    settings = json.loads((directory / "keyboard.json").read_text())
    weight = settings["blend"]["lexicon"]
    rule = PhraseRule.from_settings(settings.get("phrases")) or PhraseRule()
    results: dict = {
        "dev_docs_lines": len(dev["docs"]),
        "dev_everyday_lines": len(dev["everyday"]),
        "dev_docs_from": DEV_FROM,
        "dev_everyday": str(EVERYDAY_DEV),
    }

    def measure(label: str, name: str, mix: Blend | None, phrases: PhraseRule | None = None) -> dict:
        started = time.time()
        predictor = variant(directory, name, mix, ngram, phrases)
        row = {"variant": label, **{s: score(predictor, lines) for s, lines in dev.items()}}
        print(json.dumps(row), f"{time.time() - started:.0f}s", flush=True)
        return row

    results["variants"] = [
        measure("model alone", "model", None),
        measure("+ lexicon index and case rules", "lexicon", Blend()),
        measure(f"+ lexicon frequencies (weight {weight})", "blend", Blend(lexicon=weight)),
        measure(
            f"+ n-gram where it knows the context (share {args.ngram})",
            "blend",
            Blend(lexicon=weight, ngram=args.ngram),
        ),
        measure(
            f"+ phrases of up to {rule.max_words} words, probability >= {rule.min_probability:g} (no n-gram)",
            "blend",
            Blend(lexicon=weight),
            rule,
        ),
    ]
    results["grid"] = [
        measure(f"lexicon weight {u}", "blend", Blend(lexicon=float(u))) for u in args.grid.split(",") if u
    ]
    results["phrase_grid"] = [
        measure(f"phrases at {t}", "blend", Blend(lexicon=weight), PhraseRule(float(t), rule.max_words))
        for t in args.phrase_grid.split(",")
        if t
    ]
    results["ngram_baseline"] = {
        name: evaluate("n-gram", lambda text: ngram.suggest(text, 3), lines).summary() for name, lines in dev.items()
    }
    out = args.out or directory / "ablation.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
