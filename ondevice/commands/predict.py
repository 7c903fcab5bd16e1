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
    learn: Annotated[
        bool, typer.Option("--learn", help="With --eval: learn each line once typed, from an empty store (adaptive).")
    ] = False,
    no_learn: Annotated[
        bool, typer.Option("--no-learn", help="Leave out what was learned from you ('ondevice learned show').")
    ] = False,
    phrases: Annotated[
        bool | None,
        typer.Option(
            "--phrases/--no-phrases",
            help="Offer the rest of a phrase where the model is confident (default: the model's keyboard.json).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Next-word suggestions, or completions of the word being typed; or, with --eval, quality figures."""
    import json

    text = utf8_text("TEXT", text)
    at_least("-k", k, 1)
    if eval_file is None:
        not_applicable({"--eval-lines": eval_lines, "--baseline-text": baseline_text, "--learn": learn or None},
                       "with --eval FILE only")  # fmt: skip
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
        # --eval measures the model, not this user: their store is read only for suggestions
        store = None if no_learn or eval_file is not None else _user_store()
        predictor = Predictor(model, backend=backend, k=k, learning=store, phrases=_phrase_rule(phrases))
    if eval_file is not None:
        from ondevice.keyboard.report import evaluate_file

        summary = evaluate_file(predictor, eval_file, eval_lines, baseline_text, learn=learn)
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
    no_learn: Annotated[
        bool, typer.Option("--no-learn", help="Neither use nor add to what was learned from you.")
    ] = False,
    phrases: Annotated[
        bool | None,
        typer.Option("--phrases/--no-phrases", help="Phrases where the model is confident (default: keyboard.json)."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Type in the terminal with suggestions updated on every keystroke (Tab/F1-F3 accept, Enter quits); what you
    type is learned (words, their case, word pairs) into a store in your own data folder, unless --no-learn."""
    _check_model(model, backend)
    from ondevice.keyboard import Predictor
    from ondevice.keyboard.terminal import run_terminal
    from ondevice.quiet import captured

    store = None if no_learn else _user_store()
    with captured(verbose):
        predictor = Predictor(model, backend=backend, learning=store, phrases=_phrase_rule(phrases))
    text = run_terminal(predictor)
    if store is not None:
        store.learn(text)
        store.save()


def _phrase_rule(phrases: bool | None) -> str | None:
    """The Predictor's phrases setting: neither flag: as keyboard.json says; --phrases: its rule or the default one."""
    return "auto" if phrases is None else ("on" if phrases else None)


def _user_store():
    from ondevice.keyboard.learning import UserStore

    return UserStore.load(warn=lambda line: console.print(line, style="yellow", highlight=False, soft_wrap=True))


@one_line_errors
def learned(
    action: Annotated[str, typer.Argument(help="show, export or forget.")] = "show",
    target: Annotated[
        str | None,
        typer.Argument(help="export: the JSON file to write; forget: one word (nothing: everything)."),
    ] = None,
    top: Annotated[int, typer.Option(help="show: how many words and pairs.")] = 20,
) -> None:
    """What the keyboard learned from you: show it, export it to a file, or forget a word or everything. It is kept
    on this machine only, in your data folder ($ONDEVICE_DATA, else ~/.local/share/ondevice/learned.json)."""

    from canonical.errors import InputError
    from ondevice.keyboard.learning import store_path

    at_least("--top", top, 1)
    if action not in ("show", "export", "forget"):
        raise InputError(f"unknown action {action!r} (choose show, export or forget)")
    if action == "show" and target is not None:
        raise InputError("show takes no argument (export FILE, forget [WORD])")
    store = _user_store()
    if action == "show":
        console.print(f"{store_path()}: {len(store.words)} words, {len(store.pairs)} word pairs", highlight=False)
        for word, n in store.words.most_common(top):
            console.print(f"  {store.forms.get(word, word)}  {n}", highlight=False)
        for pair, n in store.pairs.most_common(top):
            console.print(f"  {pair.replace(chr(9), ' ')}  {n}", highlight=False)
    elif action == "export":
        if target is None:
            raise InputError("export needs the file to write (ondevice learned export FILE)")
        out = Path(target)
        if out.exists():
            raise InputError(f"{out}: already exists (choose a new file)")
        store.path = out
        try:
            store.save()
        except OSError as exc:
            raise InputError(f"{out}: cannot be written ({exc.strerror or exc})") from None
        console.print(f"wrote {out} ({len(store.words)} words)", highlight=False)
    else:
        store.forget(target)
        store.save()
        console.print(f"forgot {repr(target) if target else 'everything'}", highlight=False)


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
