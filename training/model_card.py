"""Evaluate a trained keyboard model on its held-out text and write evaluation.json + MODEL_CARD.md.

    python -m training.model_card bundled_models/keyboard-gpt2

The full held-out split is evaluated (model and n-gram baseline), and so is the small fixed subset
that CI re-runs (`CI_SUBSET_LINES` first lines): CI fails when its Acc@3 or KSR@3 falls more than 2
points below the figures recorded here."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ondevice.keyboard import Predictor
from ondevice.keyboard.report import evaluate_file, load_baseline

CI_SUBSET_LINES = 40


def evaluate_bundle(directory: Path) -> dict:
    predictor = Predictor(directory)
    heldout = directory / "heldout.txt"
    started = time.time()
    baseline = load_baseline(predictor)  # built once, used for both evaluations
    full = evaluate_file(predictor, heldout, baseline=baseline)
    subset = evaluate_file(Predictor(directory), heldout, CI_SUBSET_LINES, baseline=baseline)
    return {"full": full, "ci_subset": subset, "ci_subset_lines": CI_SUBSET_LINES,
            "minutes": round((time.time() - started) / 60, 1)}


def _row(label: str, key: str, evaluation: dict, percent: bool = True) -> str:
    model, ngram = evaluation["model"][key], evaluation["ngram"][key]
    if percent:
        return f"| {label} | {100 * model:.1f}% | {100 * ngram:.1f}% | {100 * (model - ngram):+.1f} pts |"
    return f"| {label} | {model:.1f} | {ngram:.2f} | |"


def model_card(directory: Path, training: dict, evaluation: dict) -> str:
    recipe, corpus, full = training["recipe"], training["corpus"], evaluation["full"]
    rows = "\n".join([
        _row("next-word Acc@1", "next_word_acc1", full), _row("next-word Acc@3", "next_word_acc3", full),
        _row("completion Acc@3 after 1 letter", "completion_acc3_after_1", full),
        _row("completion Acc@3 after 2 letters", "completion_acc3_after_2", full),
        _row("completion Acc@3 after 3 letters", "completion_acc3_after_3", full),
        _row("keystroke savings KSR@3", "ksr3", full),
        _row("latency p50 (ms)", "latency_p50_ms", full, percent=False),
        _row("latency p95 (ms)", "latency_p95_ms", full, percent=False),
    ])
    size_mb = (directory / "model.safetensors").stat().st_size / 1e6
    log = "\n".join(f"| {e['step']} | {e['train_loss']:.3f} | {e['heldout_loss']:.3f} | {e['minutes']} |"
                    for e in training["log"])
    return f"""# keyboard-gpt2: the bundled predictive-text model

A small GPT-2 for keyboard-style next-word suggestions and word completion, the default model of
`ondevice predict` and `ondevice type`. It ships inside the package ({size_mb:.1f} MB) so that predictive
text works right after install with no download.

## Model
- Architecture: GPT-2, {recipe['n_layer']} layers, width {recipe['n_embd']}, {recipe['n_head']} heads,
  {recipe['n_positions']} positions, vocabulary {recipe['vocab_size']} (byte-level BPE trained with
  `tokenizers`); {training['parameters'] / 1e6:.1f}M parameters, stored in fp16 safetensors.
- For scale: iOS 17's keyboard transformer is a GPT-2 of about 34M parameters (6 layers, width 512,
  15k tokens). This one is smaller to fit a 25 MB package and a one-hour, 2-core CPU training budget.

## Data
- {corpus['source']}: Debian's `python3.11-doc`, the Python 3.11 documentation
  (tutorial, HOWTOs, FAQ, library reference). Licence: {corpus['licence']}, which permits derived works;
  the model and the text shipped beside it (`train.txt.gz` for the n-gram baseline, `heldout.txt`)
  are derived from it.
- Why this text: of the English prose reachable from the package registries, it is the largest body
  of consistently edited, modern, permissively licensed writing. It is technical English, so the
  model suggests like a writer of documentation.
- Prose only: paragraphs and list items, without code blocks, tables, navigation or paragraphs that
  are mostly identifiers. Split by document (one page in 20 held out, by hash of its path), so no
  held-out sentence has a twin in training: {corpus['train_words']:,} training words
  ({training['train_tokens']:,} tokens), {corpus['heldout_words']:,} held-out words.

## Training
One command: `python -m training.train --out bundled_models/keyboard-gpt2` (downloads the Debian
package with `apt-get download`, builds the corpus, trains tokenizer and model, evaluates, writes this
card). AdamW (betas 0.9/0.95, weight decay {recipe['weight_decay']}), peak learning rate {recipe['lr']},
{recipe['warmup']} warm-up steps then cosine to 10%, {recipe['steps']} steps of {recipe['batch']} x
{recipe['n_positions']}-token windows, dropout {recipe['dropout']}, seed {recipe['seed']}; every paragraph is
preceded by `<|endoftext|>`, as the engine does at the start of a text; forward passes under
{recipe.get('autocast') or 'no'} autocast (weights, optimiser state and loss in fp32).
Took {training['minutes']} minutes on {training['device']} ({training['torch']}),
{training.get('threads', 1)} thread(s), on a 2-core machine.

| step | train loss | held-out loss | minutes |
|---|---|---|---|
{log}

## Evaluation
`ondevice predict --eval bundled_models/keyboard-gpt2/heldout.txt` on all {full['lines']} held-out
paragraphs ({full['model']['words']:,} words), torch-ane backend, k = 3, default beam (width 8, words of up to
4 tokens), context capped at 64 tokens. The baseline is a word trigram model with stupid backoff
built from the same training text. Latencies are per call of this machine's replay (2-core x86 CPU).

| metric | model | n-gram baseline | difference |
|---|---|---|---|
{rows}

CI re-runs the first {evaluation['ci_subset_lines']} held-out paragraphs
({evaluation['ci_subset']['model']['words']:,} words) and fails if the model's Acc@3 or KSR@3 falls more than
2 points below: next-word Acc@3 {100 * evaluation['ci_subset']['model']['next_word_acc3']:.1f}%,
KSR@3 {100 * evaluation['ci_subset']['model']['ksr3']:.1f}% (`evaluation.json`, key `ci_subset`).

## Limits
Technical English from one source: it knows how documentation is written, not how people text. It
has not been tuned for safety or filtered for anything beyond prose; it suggests single words only.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    training = json.loads((args.directory / "training.json").read_text())
    evaluation = evaluate_bundle(args.directory)
    (args.directory / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    (args.directory / "MODEL_CARD.md").write_text(model_card(args.directory, training, evaluation))
    print(json.dumps({k: evaluation[k]["model"] for k in ("full", "ci_subset")}, indent=2))


if __name__ == "__main__":
    main()
