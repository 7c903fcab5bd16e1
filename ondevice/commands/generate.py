"""`ondevice generate`: continue a prompt (or answer a chat turn) on any backend, streaming the text."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ondevice.commands.common import errors, not_applicable, one_line_errors, utf8_text

# Precisions each backend computes in; a Core ML package carries its own.
BACKEND_DTYPES = {"torch-ane": ("fp32", "fp16"), "mlx": ("fp32", "fp16", "bf16")}


@one_line_errors
def generate(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint or MLX directory, PATH.mlpackage (Core ML), bundled name, or model id.")
    ],
    prompt: Annotated[str | None, typer.Argument(help="Text, tokenized with the checkpoint's tokenizer.")] = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Prompt as token ids: '464, 318'.")] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Format the prompt as a user turn with the tokenizer's chat template.")
    ] = False,
    system: Annotated[str | None, typer.Option(help="With --chat: a system message before the user turn.")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="mlx, torch-ane, or coreml (a .mlpackage). Default: coreml for a package, else mlx."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32, fp16 (torch-ane, mlx), bf16 (mlx). Default: fp32; an MLX directory's own.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher samples more freely.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Sample within probability mass p.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler, for repeatable runs.")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Keep going past the end-of-sequence tokens.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show third-party warnings (coremltools, torch, ...).")] = False,
) -> None:
    """Continue a prompt on a backend, streaming the text (or token ids) as it is generated; stops at any
    end-of-sequence id the checkpoint declares (config.json and generation_config.json)."""
    import time

    from canonical.errors import InputError
    from ondevice.generate import Sampling, TextStream, chat_prompt_ids, check_max_tokens, load_tokenizer, parse_ids
    from ondevice.generate import generate as run_generate

    # Every option is checked before anything is loaded.
    prompt, system = utf8_text("PROMPT", prompt), utf8_text("--system", system)
    if (prompt is None) == (ids is None):
        raise InputError("give a prompt as text or as --ids, not both and not neither")
    if system is not None and not chat:
        raise InputError("--system is a message of a chat: add --chat")
    if chat and ids is not None:
        raise InputError("--chat formats a text prompt with the chat template: give text, not --ids")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # checks the values
    if temperature == 0:
        not_applicable(
            {"--top-k": top_k, "--top-p": top_p, "--seed": seed},
            "with sampling only (--temperature above 0); --temperature 0, the default, decodes greedily: "
            "the most likely token every time",
        )
    check_max_tokens(max_tokens)
    prompt_ids = parse_ids(ids) if ids is not None else None
    backend = _check_backend(checkpoint, backend, dtype)

    from ondevice.quiet import captured

    with captured(verbose):  # loading imports coremltools or transformers, whose notices are noise here
        lm, tokenizer_dir = _load_causal_lm(checkpoint, backend, dtype)
        tokenizer = load_tokenizer(tokenizer_dir, lm.config.vocab_size) if prompt_ids is None else None
    if prompt_ids is None:
        assert prompt is not None and tokenizer is not None  # no --ids: a text prompt, and its tokenizer loaded
        prompt_ids = chat_prompt_ids(tokenizer, prompt, system, where=checkpoint) if chat else tokenizer.encode(prompt)
    stream = TextStream(tokenizer) if tokenizer is not None else None
    stop = () if ignore_eos else lm.config.eos_token_ids
    start, count = time.perf_counter(), 0
    for token in run_generate(lm, prompt_ids, max_tokens, sampling, stop):
        count += 1
        sys.stdout.write(stream.push(token) if stream is not None else f"{token} ")
        sys.stdout.flush()
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    errors.print(
        f"{count} tokens in {elapsed:.2f} s ({count / elapsed:.1f} tokens/s, prefill included) on {lm.backend}",
        highlight=False,
        style="dim",
    )


def _is_package(spec: str) -> bool:
    from coreml_runtime.chunked import is_coreml_model

    return is_coreml_model(spec)


def _check_backend(spec: str, backend: str | None, dtype: str | None) -> str:
    """The backend to run `spec` on (given, or chosen by what `spec` is), its dtype checked against it."""
    from canonical.errors import InputError
    from ondevice.backends import BACKENDS

    package = _is_package(spec)
    backend = backend or ("coreml" if package else "mlx")
    if backend not in (*BACKENDS, "coreml"):
        raise InputError(f"unknown backend {backend!r} (available: {', '.join([*BACKENDS, 'coreml'])})")
    if package and backend != "coreml":
        raise InputError(f"{spec}: a Core ML package runs on --backend coreml, not {backend}")
    if backend == "coreml":
        if not package:
            raise InputError(
                f"--backend coreml runs a converted package: give a PATH.mlpackage or a chunked model's folder "
                f"(ondevice convert {spec} --to coreml --out PATH.mlpackage)"
            )
        if dtype is not None:
            raise InputError("--dtype does not apply to a Core ML package: it runs in its converted precision")
        return backend
    if dtype is not None and dtype not in BACKEND_DTYPES[backend]:
        choices = ", ".join(BACKEND_DTYPES[backend])
        if any(dtype in dtypes for dtypes in BACKEND_DTYPES.values()):
            raise InputError(f"--dtype {dtype} is not available on the {backend} backend (choose from {choices})")
        raise InputError(f"unknown dtype {dtype!r} (choose from {choices})")
    return backend


def _load_causal_lm(spec: str, backend: str, dtype: str | None):
    """(a CausalLM, the directory of its tokenizer) from a Hugging Face checkpoint (torch-ane, mlx), an
    exported MLX directory (mlx) or a Core ML package (coreml: run by Core ML on a Mac, by our numpy
    evaluator elsewhere; its tokenizer travels inside it)."""
    from canonical.errors import InputError

    if backend == "coreml":
        from coreml_runtime.chunked import tokenizer_dir
        from ondevice.backends.coreml import load_package

        lm = load_package(spec)
        if not lm.config.is_causal:
            raise InputError(f"{spec}: a {lm.config.family} encoder's package cannot generate text (a causal LM can)")
        return lm, tokenizer_dir(spec)

    from convert.checkpoint import Checkpoint, load_checkpoint
    from convert.mlx_checkpoint import MLXCheckpoint, is_mlx_checkpoint, load_mlx_checkpoint
    from ondevice.backends import load_backend

    ckpt: Checkpoint | MLXCheckpoint
    if is_mlx_checkpoint(spec):
        if backend != "mlx":
            raise InputError(f"{spec}: an MLX directory runs on --backend mlx, not {backend}")
        ckpt = load_mlx_checkpoint(spec)  # dtype None keeps the directory's own
    else:
        ckpt, dtype = load_checkpoint(spec), dtype or "fp32"
    if not ckpt.config.is_causal:
        raise InputError(f"{ckpt.directory}: a {ckpt.model_type} encoder cannot generate text (a causal LM can)")
    return load_backend(backend, ckpt, dtype=dtype), ckpt.directory
