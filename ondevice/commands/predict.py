"""`ondevice predict` and `ondevice type`: predictive text from the command line and in a terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ondevice.commands.common import at_least, console, not_applicable, one_line_errors, utf8_text


@one_line_errors
def predict(
    text: Annotated[str | None, typer.Argument(help="The text typed so far; '-' or nothing reads stdin.")] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Causal LM checkpoint (default: the bundled keyboard model), an MLX "
            "directory (--backend mlx) or a package (--backend coreml)."
        ),
    ] = ("keyboard-gpt2"),
    backend: Annotated[str, typer.Option(help="torch-ane, mlx, or coreml (a converted package, on a Mac).")] = (
        "torch-ane"
    ),
    k: Annotated[int, typer.Option("-k", help="How many suggestions.")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a line of words.")] = False,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Held-out text to evaluate on.")] = None,
    eval_lines: Annotated[int | None, typer.Option(help="Evaluate on the first N lines only.")] = None,
    baseline_text: Annotated[
        Path | None, typer.Option(help="Training text of the n-gram baseline (default: the bundled model's).")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Next-word suggestions, or completions of the word being typed; or, with --eval, quality figures."""
    import json

    text = utf8_text("TEXT", text)
    at_least("-k", k, 1)
    if eval_file is None:
        not_applicable({"--eval-lines": eval_lines, "--baseline-text": baseline_text}, "with --eval FILE only")
    else:
        not_applicable({"TEXT": text}, "without --eval (--eval FILE evaluates on the file's lines)")
        at_least("--eval-lines", eval_lines, 1)
        for path in (eval_file, baseline_text):
            if path is not None and not path.is_file():
                from canonical.errors import InputError

                raise InputError(f"{path}: cannot be read ({'a directory' if path.is_dir() else 'no such file'})")
    _check_model(model, backend)

    from ondevice.keyboard import Predictor
    from ondevice.quiet import captured

    with captured(verbose):  # a package's backend imports coremltools, whose import notices are noise here
        if backend == "coreml" and Path(model).is_dir():
            from coreml_runtime.integrity import check_package_weights

            check_package_weights(model)
        predictor = Predictor(model, backend=backend, k=k)
    if eval_file is not None:
        from ondevice.keyboard.report import evaluate_file

        summary = evaluate_file(predictor, eval_file, eval_lines, baseline_text)
        if json_output:
            console.print_json(json.dumps(summary))
        else:
            from ondevice.keyboard.report import eval_table

            console.print(eval_table(summary))
        return
    if text is None or text == "-":
        text = _stdin_text()
    suggestions = predictor.suggest(text)
    if json_output:
        console.print_json(json.dumps([{"word": s.word, "probability": s.probability} for s in suggestions]))
    elif suggestions:
        console.print("  ".join(s.word for s in suggestions), highlight=False)
    else:
        console.print("(no suggestion)")


@one_line_errors
def type_(
    model: Annotated[str, typer.Option(help="Causal LM checkpoint (default: the bundled keyboard model).")] = (
        "keyboard-gpt2"
    ),
    backend: Annotated[str, typer.Option(help="torch-ane, mlx, or coreml.")] = "torch-ane",
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Type in the terminal with suggestions updated on every keystroke (Tab/F1-F3 accept, Enter quits)."""
    _check_model(model, backend)
    from ondevice.keyboard import Predictor
    from ondevice.keyboard.terminal import run_terminal
    from ondevice.quiet import captured

    with captured(verbose):
        predictor = Predictor(model, backend=backend)
    run_terminal(predictor)


def _stdin_text() -> str:
    """The text on standard input, less the one line break that ends it (`echo "Thanks for the " | ondevice predict`
    types no new paragraph). Any bytes are taken: those that are not UTF-8 become U+FFFD, as a text field shows them."""
    text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    return text.removesuffix("\n").removesuffix("\r")


def _check_model(model: str, backend: str) -> None:
    """An MLX directory runs on the mlx backend only (with its own dtype and quantization)."""
    from canonical.errors import InputError
    from convert.checkpoint import is_mlx_directory
    from coreml_runtime.chunked import is_coreml_model

    if backend != "coreml" and is_coreml_model(model):
        raise InputError(f"{model}: a Core ML model runs on --backend coreml (Core ML on a Mac), not {backend}")
    if backend != "mlx" and is_mlx_directory(model):
        raise InputError(
            f"{model}: an MLX directory written by 'ondevice convert --to mlx' runs on --backend mlx, not {backend}"
        )
