"""The blend weights, chosen on development text, and what each part of the keyboard adds there.

    python -m training.ablation bundled_models/keyboard-gpt2

Development text, which no figure of the model card's evaluation uses: WordNet usage examples outside the
everyday held-out sample (`python -m training.everyday --dev-out ...`), and documentation held-out paragraphs
from `DEV_FROM` on (the card reports the paragraphs before). A grid of (lexicon, n-gram) weights is scored
there; the weights chosen: the highest sum of both sets' KSR@3 among those that keep the documentation's
next-word Acc@3 within 1 point of the search over the lexicon alone (weights 0, 0), and without the n-gram
unless `--with-ngram` (building it from the training text takes 20 s at start-up here). Then the variants,
each on top of the one before: the model alone (its own spellings and capitals); + the lexicon as the search's
index and the case rules (weights 0, 0); + the lexicon's frequencies (the best lexicon weight alone); + the
n-gram baseline where it knows the context (the best pair). Writes ablation.json beside the model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ondevice.keyboard import Predictor
from ondevice.keyboard.blend import Blend
from ondevice.keyboard.evaluate import evaluate
from ondevice.keyboard.report import load_baseline, read_lines

EVERYDAY_DEV = Path("build/keyboard-corpus/dev-everyday.txt")  # `python -m training.everyday --dev-out`
DEV_FROM = 560  # documentation held-out lines from here on are development text


def variant(directory: Path, name: str, mix: Blend | None, ngram) -> Predictor:
    if name == "model":
        return Predictor(directory, lexicon=None)
    return Predictor(directory, lexicon="english", blend_weights=mix or Blend(), ngram=ngram)


def score(predictor: Predictor, lines: list[str]) -> dict:
    """The replay metrics of `predictor` over `lines`, from an empty cache."""
    predictor.reset()
    return evaluate("model", predictor.suggest, lines, k=predictor.k).summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--docs-lines", type=int, default=25)
    parser.add_argument("--everyday-lines", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--with-ngram", action="store_true", help="let the chosen weights include the n-gram")
    args = parser.parse_args()
    torch.set_num_threads(1)
    directory = args.directory
    dev = {"docs": read_lines(directory / "heldout.txt")[DEV_FROM : DEV_FROM + args.docs_lines],
           "everyday": read_lines(EVERYDAY_DEV, args.everyday_lines)}
    ngram = load_baseline(Predictor(directory, lexicon=None))
    results: dict = {"dev_docs_lines": len(dev["docs"]), "dev_everyday_lines": len(dev["everyday"]),
                     "dev_docs_from": DEV_FROM, "dev_everyday": str(EVERYDAY_DEV)}

    def measure(name: str, mix: Blend | None) -> dict:
        started = time.time()
        row = {name: score(variant(directory, name, mix, ngram), lines) for name, lines in dev.items()}
        print(json.dumps({"variant": name, **(vars(mix) if mix else {}), **row}), f"{time.time() - started:.0f}s",
              flush=True)
        return row

    tuning = []
    for mix in [Blend(lexicon=u, ngram=n) for u in (0.0, 0.1, 0.3) for n in (0.0, 0.2)]:
        row = measure("blend", mix)
        tuning.append({"lexicon": mix.lexicon, "ngram": mix.ngram, **row,
                       "objective": row["docs"]["ksr3"] + row["everyday"]["ksr3"]})
    floor = next(r for r in tuning if r["lexicon"] == 0 and r["ngram"] == 0)["docs"]["next_word_acc3"] - 0.01
    allowed = [r for r in tuning if r["docs"]["next_word_acc3"] >= floor]
    best = max(allowed, key=lambda r: r["objective"])
    lexicon_only = max((r for r in allowed if r["ngram"] == 0), key=lambda r: r["objective"])
    chosen = best if args.with_ngram else lexicon_only
    results["tuning"], results["chosen"] = tuning, {"lexicon": chosen["lexicon"], "ngram": chosen["ngram"]}

    def pick(u: float, n: float) -> dict:
        row = next(r for r in tuning if r["lexicon"] == u and r["ngram"] == n)
        return {"docs": row["docs"], "everyday": row["everyday"]}

    results["variants"] = [
        {"variant": "model alone", **measure("model", None)},
        {"variant": "+ lexicon index and case rules", **pick(0.0, 0.0)},
        {"variant": f"+ lexicon frequencies ({lexicon_only['lexicon']})", **pick(lexicon_only["lexicon"], 0.0)},
        {"variant": f"+ n-gram where it knows the context ({best['ngram']})", **pick(best["lexicon"], best["ngram"])},
    ]
    results["ngram_baseline"] = {name: evaluate("n-gram", lambda text: ngram.suggest(text, 3), lines).summary()
                                 for name, lines in dev.items()}
    out = args.out or directory / "ablation.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
