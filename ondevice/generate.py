"""Text generation, written once against the `CausalLM` protocol: any backend, greedy or sampled.

Sampling is numpy on the float32 logits the backends return (temperature, then top-k, then top-p,
the order Hugging Face and mlx-lm apply them), seeded so a run can be repeated. Chat models take their
prompt through the tokenizer's own chat template (`chat_prompt_ids`) and stop at any of the checkpoint's
end-of-sequence ids (`config.eos_token_ids`: config.json and generation_config.json together)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canonical.config import check_tokenizer_fits
from canonical.errors import InputError
from ondevice.runtime import CausalLM


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy (argmax); top_k / top_p are then irrelevant
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):  # NaN fails every comparison
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:  # NaN too
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise InputError(f"--seed {self.seed}: must be 0 or more")


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token id from logits (V,)."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < z.size:
        kth = np.partition(z, -sampling.top_k)[-sampling.top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens
        dropped = order[before >= sampling.top_p]  # the most likely token always stays
        probs[dropped] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def generate(
    lm: CausalLM,
    prompt: Sequence[int],
    max_tokens: int,
    sampling: Sampling = Sampling(),
    stop: Sequence[int] = (),
) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`, stopping after a token in `stop`.

    Starts from an empty cache; one prefill, then one decode per token (the last token sampled is
    never fed back, so a prompt of n tokens needs n + max_tokens - 1 cache slots)."""
    if not prompt:
        raise InputError("the prompt is empty")
    check_max_tokens(max_tokens)
    vocab = lm.config.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    needed = len(prompt) + max_tokens - 1
    if needed > lm.capacity:
        raise InputError(
            f"{len(prompt)} prompt tokens + {max_tokens} new tokens need {needed} positions; "
            f"the model holds {lm.capacity}"
        )
    rng = np.random.default_rng(sampling.seed)
    lm.trim(0)
    logits = lm.prefill(prompt)[-1]
    for step in range(max_tokens):
        token = sample(logits, sampling, rng)
        yield token
        if token in stop or step + 1 == max_tokens:
            return
        logits = lm.decode(token)


def check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 1:
        raise InputError(f"max tokens must be at least 1, got {max_tokens}")


def chat_prompt_ids(tokenizer, prompt: str, system: str | None = None, where: object = "the checkpoint") -> list[int]:
    """Token ids of one user turn (after a system message, if given) through the tokenizer's chat template,
    ending with the template's generation prompt (the assistant's turn begins); InputError when the
    tokenizer has no chat template or its template refuses the messages."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise InputError(
            f"{where}: the tokenizer has no chat template, so --chat cannot format the prompt "
            "(drop --chat to continue the text as it is)"
        )
    named = isinstance(template, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in template.items())
    if not isinstance(template, str) and not named:
        raise InputError(
            f"{where}: the tokenizer's chat_template is a {type(template).__name__}, not a template (a "
            "Jinja string, or named Jinja strings)"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    from jinja2 import TemplateError, TemplateSyntaxError

    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    except TemplateSyntaxError as exc:
        raise InputError(
            f"{where}: the chat template is not valid Jinja (line {exc.lineno}: "
            f"{str(exc.message or exc).splitlines()[0]})"
        ) from exc
    except TemplateError as exc:  # e.g. a template that raises on a system message
        raise InputError(f"{where}: the chat template refuses these messages ({str(exc).splitlines()[0]})") from exc
    if isinstance(ids, Mapping):  # a BatchEncoding, where return_dict is not honoured
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def load_tokenizer(directory: Path, vocab_size: int | None = None):
    """The checkpoint's own tokenizer (transformers' AutoTokenizer), or InputError if it has none or if it makes ids
    past the model's `vocab_size` (another model's tokenizer)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json", "vocab.txt")):
        raise InputError(f"{directory}: no tokenizer files (tokenizer.json, vocab.json); pass token ids with --ids")
    from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

    tokenizer: PreTrainedTokenizerBase
    try:
        if (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
            # a bare tokenizers file: AutoTokenizer would pick a class by model_type and ignore it
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{directory}: tokenizer cannot be loaded ({str(exc).splitlines()[0]})") from exc
    if vocab_size is not None:
        check_tokenizer_fits(len(tokenizer), vocab_size, directory)
    return tokenizer


def parse_ids(text: str) -> list[int]:
    """'1, 2 3' -> [1, 2, 3]."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise InputError(f"--ids takes integers separated by commas or spaces, got {text!r}") from exc


class TextStream:
    """Turns generated ids into printable text pieces as they arrive. Decodes the whole continuation
    each time and emits the new suffix, holding back a trailing partial UTF-8 character (byte-level
    BPE splits multi-byte characters across tokens)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece
