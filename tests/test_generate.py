"""`ondevice generate` and the generation library: greedy generation on every backend, seeded sampling with top-k
and top-p, stop tokens, streaming ids and text, and bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from canonical.errors import ConversionError, InputError
from convert.checkpoint import load_checkpoint
from convert.mlx_export import export_mlx
from ondevice.backends.mlx import load
from ondevice.generate import Sampling, generate, sample
from ondevice.runtime import greedy_tokens
from tests.cli import assert_one_line_error, run_cli

runner = CliRunner()


def test_greedy_generation_is_greedy_tokens_on_both_backends(gpt2_dir):
    from ondevice.backends import load_backend

    ckpt = load_checkpoint(gpt2_dir)
    prompt = [5, 17, 42]
    expected = greedy_tokens(load_backend("torch-ane", ckpt), prompt, 20)
    for backend in ("torch-ane", "mlx"):
        assert list(generate(load_backend(backend, ckpt), prompt, 20)) == expected


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = lambda s: [sample(logits, s, np.random.default_rng(s.seed)) for _ in range(1)]  # noqa: E731
    assert draws(Sampling(temperature=1.0, seed=3)) == draws(Sampling(temperature=1.0, seed=3))
    rng = np.random.default_rng(0)
    assert {sample(logits, Sampling(temperature=1.0, top_k=2), rng) for _ in range(300)} == {0, 1}
    assert {sample(logits, Sampling(temperature=1.0, top_p=0.6), rng) for _ in range(300)} == {0, 1}
    assert {sample(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(100)} == {0}
    counts = np.bincount([sample(logits, Sampling(temperature=1.0), rng) for _ in range(4000)], minlength=4)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_generate_stops_at_a_stop_token(gpt2_dir):
    lm = load(load_checkpoint(gpt2_dir))
    free = list(generate(lm, [1, 2, 3], 12))
    stopped = list(generate(lm, [1, 2, 3], 12, stop=(free[4],)))
    assert stopped == free[: free.index(free[4]) + 1]


def test_cli_generate_streams_ids_and_text(gpt2_dir, tmp_path):
    result = run_cli("generate", gpt2_dir, "--ids", "5, 17 42", "--max-tokens", "20", "--ignore-eos")
    assert result.exit_code == 0, result.output
    expected = greedy_tokens(load(load_checkpoint(gpt2_dir)), [5, 17, 42], 20)
    assert result.stdout.split() == [str(t) for t in expected]

    # a text prompt through a checkpoint's own tokenizer (a word-level one, within the 211-token vocabulary)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "the", "quick", "brown", "fox"] + [f"w{i}" for i in range(5, 211)]  # one word per id
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = export_mlx(gpt2_dir, tmp_path / "mlx", dtype="fp32", progress=False)
    tok.save(str(out / "tokenizer.json"))
    result = run_cli("generate", out, "the quick fox", "--max-tokens", "8", "--ignore-eos")
    assert result.exit_code == 0, result.output
    expected = greedy_tokens(load(load_checkpoint(gpt2_dir)), [1, 2, 4], 8)
    assert result.stdout.split() == [words[t] for t in expected]
    sampled = run_cli("generate", out, "the quick fox", "--max-tokens", "8", "--temperature", "0.8", "--seed", "1")
    assert (
        sampled.exit_code == 0
        and sampled.stdout
        == run_cli("generate", out, "the quick fox", "--max-tokens", "8", "--temperature", "0.8", "--seed", "1").stdout
    )  # a seed repeats a sampled run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "not both and not neither"),
        (["hello", "--ids", "1"], "not both and not neither"),
        (["hello"], "no tokenizer files"),
        (["--ids", "1,x"], "--ids takes integers"),
        (["--ids", "1,9999"], "token id 9999 is outside the vocabulary"),
        (["--ids", "1", "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--ids", "1", "--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--ids", "1", "--top-k", "0"], "top-k must be at least 1"),
        (["--ids", "1", "--max-tokens", "0"], "max tokens must be at least 1"),
        (["--ids", "1", "--max-tokens", "500"], "the model holds 160"),
        (["--ids", "1", "--backend", "cuda"], "unknown backend 'cuda'"),
        (["--ids", "1", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    ],
)
def test_generate_bad_input(gpt2_dir, args, message):
    assert_one_line_error(run_cli("generate", gpt2_dir, *args), message)


def test_generate_refuses_encoders_and_mlx_dirs_on_other_backends(bert_dir, gpt2_dir, tmp_path):
    assert_one_line_error(run_cli("generate", bert_dir, "--ids", "1"), "encoder cannot generate")
    out = export_mlx(gpt2_dir, tmp_path / "mlx", progress=False)
    assert_one_line_error(run_cli("generate", out, "--ids", "1", "--backend", "torch-ane"), "runs on --backend mlx")


def test_library_errors_are_typed(gpt2_dir, tmp_path):
    with pytest.raises(ConversionError):
        export_mlx(gpt2_dir, tmp_path / "o", dtype="fp64")
    with pytest.raises(InputError):
        list(generate(load(load_checkpoint(gpt2_dir)), [], 3))
