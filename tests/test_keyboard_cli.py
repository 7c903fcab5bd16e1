"""`ondevice predict` and `ondevice type` as a user runs them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ondevice.cli import app
from tests.cli import assert_one_line_error
from tests.keyboard_fixtures import SENTENCES, make_keyboard_checkpoint


@pytest.fixture(scope="module")
def keyboard_dir(tmp_path_factory):
    return make_keyboard_checkpoint(tmp_path_factory.mktemp("keyboard"))


def run(*args, stdin: bytes | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def test_predict_prints_words_and_json(keyboard_dir):
    plain = run("predict", "The quick bro", "--model", str(keyboard_dir))
    assert plain.exit_code == 0, plain.output
    assert 1 <= len(plain.stdout.split()) <= 3
    as_json = run("predict", "The quick bro", "--model", str(keyboard_dir), "--json", "-k", "2")
    rows = json.loads(as_json.stdout)
    assert len(rows) == 2 and all(r["word"].lower().startswith("bro") and 0 < r["probability"] <= 1 for r in rows)


@pytest.mark.parametrize(
    "stdin", [b"", b"   \n\t", "caf\u00e9 \U0001f600 ".encode(), b"\xff\xfe half \xc3", b"x" * 100_000]
)
def test_predict_reads_any_bytes_from_stdin(keyboard_dir, stdin):
    result = run("predict", "--model", str(keyboard_dir), stdin=stdin)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()  # suggestions, or the "(no suggestion)" line
    assert "Traceback" not in result.output


def test_the_line_break_that_ends_standard_input_is_not_typed(keyboard_dir):
    """`echo "The quick " | ondevice predict`: echo's line break is not a new paragraph (whose first word would be
    capitalised); the suggestions are those of the text as typed."""
    typed = run("predict", "The quick ", "--model", str(keyboard_dir), "--json", "-k", "5")
    for ending in (b"\n", b"\r\n"):
        piped = run("predict", "--model", str(keyboard_dir), "--json", "-k", "5", stdin=b"The quick " + ending)
        assert piped.exit_code == 0, piped.output
        assert json.loads(piped.stdout) == json.loads(typed.stdout)


def test_predict_eval_compares_with_the_ngram_baseline(keyboard_dir, tmp_path):
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(SENTENCES[:2]) + "\n")
    result = run("predict", "--model", str(keyboard_dir), "--eval", str(heldout), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"]["words"] == summary["ngram"]["words"] == sum(len(s.split()) for s in SENTENCES[:2])
    for side in ("model", "ngram"):
        assert 0 <= summary[side]["ksr3"] <= 1 and summary[side]["latency_p95_ms"] > 0


def test_predict_bad_input(keyboard_dir, bert_dir, gpt2_dir, tmp_path):
    assert_one_line_error(run("predict", "hi", "--model", str(bert_dir)), "needs a causal LM")
    # A GPT-2 saved without a tokenizer (transformers 5 would hand back an empty one, and no suggestions).
    assert_one_line_error(run("predict", "hi", "--model", str(gpt2_dir)), "no tokenizer files")
    assert_one_line_error(
        run("predict", "--model", str(keyboard_dir), "--eval", str(tmp_path / "none.txt")), "none.txt", "cannot be read"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_one_line_error(run("predict", "--model", str(keyboard_dir), "--eval", str(empty)), "no text")


def test_type_session_updates_and_accepts(keyboard_dir):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from ondevice.keyboard import Predictor
    from ondevice.keyboard.terminal import KeyboardSession, run_terminal

    predictor = Predictor(keyboard_dir)
    session = KeyboardSession(predictor)
    session.update("The quick bro")
    assert session.words and session.latency_ms > 0
    assert session.accept("The quick bro", 0) == f"The quick {session.words[0]} "
    assert "ms" in session.toolbar()

    with create_pipe_input() as pipe:
        pipe.send_text("The qu\t\r")  # type, accept the first suggestion with Tab, Enter
        text = run_terminal(predictor, input=pipe, output=DummyOutput())
    assert text.startswith("The qu") and text.endswith(" ") and len(text) > len("The qu ")
