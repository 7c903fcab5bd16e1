"""`ondevice generate`: continue a prompt on any backend, streaming the text."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ondevice.commands.common import errors, one_line_errors


@one_line_errors
def generate(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint or MLX directory, bundled name, or model id.")],
    prompt: Annotated[str | None, typer.Argument(help="Text, tokenized with the checkpoint's tokenizer.")] = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Prompt as token ids: '464, 318'.")] = None,
    backend: Annotated[str, typer.Option(help="torch-ane or mlx.")] = "mlx",
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16, bf16 (mlx). Default: fp32.")] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher samples more freely.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Sample within probability mass p.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler, for repeatable runs.")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Keep going past the end-of-text token.")] = False,
) -> None:
    """Continue a prompt on a backend, streaming the text (or token ids) as it is generated."""
    import time

    from canonical.errors import InputError
    from ondevice.generate import Sampling, TextStream, load_tokenizer, parse_ids
    from ondevice.generate import generate as run_generate

    if (prompt is None) == (ids is None):
        raise InputError("give a prompt as text or as --ids, not both and not neither")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # checks the values
    lm, directory = _load_causal_lm(checkpoint, backend, dtype)
    tokenizer = load_tokenizer(directory) if ids is None else None
    prompt_ids = parse_ids(ids) if ids is not None else tokenizer.encode(prompt)
    stream = TextStream(tokenizer) if tokenizer is not None else None
    stop = () if ignore_eos else lm.config.eos_token_ids
    start, count = time.perf_counter(), 0
    for token in run_generate(lm, prompt_ids, max_tokens, sampling, stop):
        count += 1
        sys.stdout.write(stream.push(token) if stream is not None else f"{token} ")
        sys.stdout.flush()
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    errors.print(f"{count} tokens in {elapsed:.2f} s ({count / elapsed:.1f} tokens/s, prefill included) "
                 f"on {lm.backend}", highlight=False, style="dim")


def _load_causal_lm(spec: str, backend: str, dtype: str | None):
    """A CausalLM from a Hugging Face checkpoint (any backend) or an exported MLX directory (mlx)."""
    from canonical.errors import InputError
    from convert.checkpoint import load_checkpoint
    from convert.mlx_checkpoint import is_mlx_checkpoint, load_mlx_checkpoint
    from ondevice.backends import load_backend

    if is_mlx_checkpoint(spec):
        if backend != "mlx":
            raise InputError(f"{spec}: an MLX directory runs on --backend mlx, not {backend}")
        ckpt, dtype = load_mlx_checkpoint(spec), dtype  # None keeps the directory's own dtype
    else:
        ckpt, dtype = load_checkpoint(spec), dtype or "fp32"
    if not ckpt.config.is_causal:
        raise InputError(f"{ckpt.directory}: a {ckpt.model_type} encoder cannot generate text (a causal LM can)")
    return load_backend(backend, ckpt, dtype=dtype), ckpt.directory
