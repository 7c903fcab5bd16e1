"""`ondevice type`: a keyboard in the terminal. Suggestions and the latency of computing them update on
every keystroke; Tab or F1/F2/F3 accepts a suggestion (the word and a space, as a phone keyboard does)."""

from __future__ import annotations

import time

from ondevice.keyboard.predictor import Predictor
from ondevice.keyboard.words import split_partial


class KeyboardSession:
    """The state behind the terminal UI, separate from it so it can be tested without a terminal."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.words: list[str] = []
        self.latency_ms = 0.0

    def update(self, text: str) -> None:
        started = time.perf_counter()
        self.words = [s.word for s in self.predictor.suggest(text)]
        self.latency_ms = (time.perf_counter() - started) * 1e3

    def accept(self, text: str, index: int) -> str:
        """The text after picking suggestion `index`: the partial word replaced, then a space."""
        if index >= len(self.words):
            return text
        _, partial, _ = split_partial(text)
        return text[: len(text) - len(partial)] + self.words[index] + " "

    def toolbar(self) -> str:
        shown = "  ".join(f"[F{i + 1}] {w}" for i, w in enumerate(self.words)) or "(no suggestion)"
        return f" {shown}    {self.latency_ms:.1f} ms"


def run_terminal(predictor: Predictor, input=None, output=None) -> str:
    """Run the interactive session until Enter; return the final text."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.key_binding import KeyBindings

    session = KeyboardSession(predictor)
    session.update("")
    bindings = KeyBindings()

    def accept(index: int):
        def handler(event):
            buffer = event.app.current_buffer
            buffer.text = session.accept(buffer.text, index)
            buffer.cursor_position = len(buffer.text)

        return handler

    bindings.add("tab")(accept(0))
    for i, key in enumerate(("f1", "f2", "f3")):
        bindings.add(key)(accept(i))

    prompt: PromptSession[str] = PromptSession(
        key_bindings=bindings, bottom_toolbar=session.toolbar, input=input, output=output
    )
    prompt.default_buffer.on_text_changed += lambda buffer: session.update(buffer.text)
    return prompt.prompt("type> ")
