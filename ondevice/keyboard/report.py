"""`ondevice predict --eval`: the model and the n-gram baseline on the same held-out text, side by side."""

from __future__ import annotations

import gzip
from pathlib import Path

from rich.table import Table

from canonical.errors import InputError
from ondevice.keyboard.evaluate import evaluate
from ondevice.keyboard.ngram import NGramModel
from ondevice.keyboard.predictor import Predictor

BASELINE_TEXT = "train.txt.gz"  # beside a bundled model: the text it was trained on


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    lines = [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path}: holds no text to evaluate on")
    return lines[:limit] if limit else lines


def load_baseline(predictor: Predictor, baseline_text: Path | None = None) -> NGramModel:
    """The n-gram baseline, built from the model's training text (or `baseline_text`)."""
    baseline_text = baseline_text or predictor.checkpoint_dir / BASELINE_TEXT
    if not baseline_text.is_file():
        raise InputError(f"{baseline_text}: no training text for the n-gram baseline (pass --baseline-text)")
    return NGramModel.train(read_lines(baseline_text))


def evaluate_file(
    predictor: Predictor,
    path: Path,
    limit: int | None = None,
    baseline_text: Path | None = None,
    baseline: NGramModel | None = None,
    learn: bool = False,
) -> dict:
    """The model and the n-gram baseline on `path`'s lines; `learn`: the model learns each line once typed, from an
    empty store kept in memory (the user's own store is neither read nor changed): adaptive figures."""
    lines = read_lines(path, limit)
    baseline = baseline or load_baseline(predictor, baseline_text)
    predictor.reset()
    if learn:
        from ondevice.keyboard.learning import UserStore

        saved, predictor.learning = predictor.learning, UserStore()
        try:
            model = evaluate("model (learning)", predictor.suggest, lines, k=predictor.k, learn=predictor.learn)
        finally:
            predictor.learning = saved
    else:
        model = evaluate("model", predictor.suggest, lines, k=predictor.k)
    ngram = evaluate("n-gram", lambda text: baseline.suggest(text, predictor.k), lines, k=predictor.k)
    return {
        "eval_file": str(path),
        "lines": len(lines),
        "backend": predictor.lm.backend,
        "model": model.to_json(),
        "ngram": ngram.to_json(),
    }


_ROWS = [
    ("next_word_acc1", "next-word Acc@1", True),
    ("next_word_acc3", "next-word Acc@3", True),
    ("completion_acc3_after_1", "completion Acc@3, 1 letter", True),
    ("completion_acc3_after_2", "completion Acc@3, 2 letters", True),
    ("completion_acc3_after_3", "completion Acc@3, 3 letters", True),
    ("ksr3", "keystroke savings KSR@3", True),
    ("latency_p50_ms", "latency p50 (ms)", False),
    ("latency_p95_ms", "latency p95 (ms)", False),
]


def eval_table(summary: dict) -> Table:
    table = Table(title=f"{summary['eval_file']} · {summary['model']['words']} words · {summary['backend']}")
    for column in ("metric", "model", "n-gram", "model − n-gram"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label, percent in _ROWS:
        a, b = summary["model"][key], summary["ngram"][key]
        if percent:
            table.add_row(label, f"{100 * a:.1f}%", f"{100 * b:.1f}%", f"{100 * (a - b):+.1f} pts")
        else:
            table.add_row(label, f"{a:.2f}", f"{b:.2f}", "")
    return table
