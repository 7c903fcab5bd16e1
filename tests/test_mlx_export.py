"""`ondevice convert --to mlx` and `ondevice generate`: round trip, atomic writes, mlx-lm loading,
sampling, and bad input through the CLI (exit code 2, one line)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from canonical.errors import ConversionError, InputError
from convert.checkpoint import load_checkpoint
from convert.mlx_checkpoint import load_mlx_checkpoint
from convert.mlx_export import export_mlx
from ondevice.backends.mlx import load
from ondevice.cli import app
from ondevice.generate import Sampling, generate, sample
from ondevice.parity import TOLERANCES, compare
from ondevice.runtime import greedy_tokens

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("dtype", "bits"), [("fp32", None), ("fp16", None), ("fp32", 4)])
def test_gpt2_round_trip_equals_the_in_memory_model(gpt2_dir, tmp_path, dtype, bits):
    out = tmp_path / "mlx"
    result = _run(
        "convert", gpt2_dir, "--to", "mlx", "--out", out, "--dtype", dtype, *(["--quantize", bits] if bits else [])
    )
    assert result.exit_code == 0, result.output
    reloaded = load(load_mlx_checkpoint(out), dtype=None)
    direct = load(load_checkpoint(gpt2_dir), dtype=dtype, quantize=bits)
    ids = list(range(3, 40))
    np.testing.assert_array_equal(reloaded.prefill(ids), direct.prefill(ids))
    config = json.loads((out / "config.json").read_text())
    assert config["ondevice_mlx"]["dtype"] == dtype
    assert config.get("quantization") == ({"group_size": 64, "bits": bits} if bits else None)


def test_fp32_export_keeps_reference_parity(gpt2_dir, tmp_path):
    from ondevice.reference import load_reference

    out = export_mlx(gpt2_dir, tmp_path / "mlx", dtype="fp32", progress=False)
    reference = load_reference(load_checkpoint(gpt2_dir))
    ours = load(load_mlx_checkpoint(out), dtype=None)
    ids = list(range(5, 70))
    assert compare("logits", ours.prefill(ids), reference.prefill(ids)).within(TOLERANCES["fp32"])
    assert greedy_tokens(ours, ids[:8], 32) == greedy_tokens(reference, ids[:8], 32)


def test_minilm_export_copies_tokenizer_and_pooling(minilm_dir, tmp_path):
    out = export_mlx(minilm_dir, tmp_path / "minilm", dtype="fp32", quantize=8, progress=False)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "modules.json"):
        assert (out / name).is_file(), name
    assert (out / "1_Pooling" / "config.json").is_file()
    ckpt = load_mlx_checkpoint(out)
    assert ckpt.config == load_checkpoint(minilm_dir).config  # pooling, normalisation and heads survive
    direct = load(load_checkpoint(minilm_dir), quantize=8)
    ids = np.arange(1, 17)[None].repeat(2, 0)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    got, want = load(ckpt, dtype=None).encode(ids, mask), direct.encode(ids, mask)
    np.testing.assert_array_equal(got["sentence_embedding"], want["sentence_embedding"])


def test_mlx_lm_runs_the_gpt2_export(gpt2_dir, tmp_path):
    """mlx-lm loads our GPT-2 directory (its names, its `quantization` key) and computes our logits."""
    import mlx.core as mx
    import mlx_lm  # the test extra installs it

    out = export_mlx(gpt2_dir, tmp_path / "mlx", dtype="fp16", quantize=4, progress=False)
    model, _ = mlx_lm.load(str(out))
    ids = list(range(2, 30))
    theirs = np.array(model(mx.array([ids])).astype(mx.float32))[0]
    np.testing.assert_array_equal(theirs, load(load_mlx_checkpoint(out), dtype=None).prefill(ids))
    assert json.loads((out / "config.json").read_text())["ondevice_mlx"]["mlx_lm_compatible"]


def test_existing_output_is_refused_then_replaced_with_overwrite(gpt2_dir, tmp_path):
    """--overwrite replaces an earlier export, never a folder of the user's files (tests/test_overwrite.py)."""
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):  # with or without it: --overwrite would not replace it either
        _one_line_error(_run("convert", gpt2_dir, "--to", "mlx", "--out", out, *overwrite), "not written by ondevice")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    _one_line_error(_run("convert", gpt2_dir, "--to", "mlx", "--out", out), "already exists", "--overwrite")
    assert _run("convert", gpt2_dir, "--to", "mlx", "--out", out, "--overwrite").exit_code == 0  # an empty folder
    assert _run("convert", gpt2_dir, "--to", "mlx", "--out", out, "--overwrite").exit_code == 0  # an earlier export
    assert (out / "model.safetensors").is_file()


def test_a_failed_export_leaves_nothing(gpt2_dir, tmp_path, monkeypatch):
    import mlx.core as mx

    def broken(path, *args, **kwargs):
        open(path, "wb").write(b"half")  # noqa: SIM115 - a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_mlx(gpt2_dir, tmp_path / "mlx", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dtype", "int8"], "--dtype int8"),
        (["--quantize", "3"], "--quantize 3"),
        (["--quantize", "4", "--group-size", "48"], "--group-size 48"),
    ],
)
def test_convert_bad_options(gpt2_dir, tmp_path, options, message):
    _one_line_error(_run("convert", gpt2_dir, "--to", "mlx", "--out", tmp_path / "o", *options), message)
    assert not (tmp_path / "o").exists()


def test_not_an_mlx_directory(gpt2_dir):
    from canonical.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not an MLX directory"):
        load_mlx_checkpoint(gpt2_dir)


# --- generate -------------------------------------------------------------------------------------


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
    result = _run("generate", gpt2_dir, "--ids", "5, 17 42", "--max-tokens", "20", "--ignore-eos")
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
    result = _run("generate", out, "the quick fox", "--max-tokens", "8", "--ignore-eos")
    assert result.exit_code == 0, result.output
    expected = greedy_tokens(load(load_checkpoint(gpt2_dir)), [1, 2, 4], 8)
    assert result.stdout.split() == [words[t] for t in expected]
    sampled = _run("generate", out, "the quick fox", "--max-tokens", "8", "--temperature", "0.8", "--seed", "1")
    assert (
        sampled.exit_code == 0
        and sampled.stdout
        == _run("generate", out, "the quick fox", "--max-tokens", "8", "--temperature", "0.8", "--seed", "1").stdout
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
    _one_line_error(_run("generate", gpt2_dir, *args), message)


def test_generate_refuses_encoders_and_mlx_dirs_on_other_backends(bert_dir, gpt2_dir, tmp_path):
    _one_line_error(_run("generate", bert_dir, "--ids", "1"), "encoder cannot generate")
    out = export_mlx(gpt2_dir, tmp_path / "mlx", progress=False)
    _one_line_error(_run("generate", out, "--ids", "1", "--backend", "torch-ane"), "runs on --backend mlx")


def test_library_errors_are_typed(gpt2_dir, tmp_path):
    with pytest.raises(ConversionError):
        export_mlx(gpt2_dir, tmp_path / "o", dtype="fp64")
    with pytest.raises(InputError):
        list(generate(load(load_checkpoint(gpt2_dir)), [], 3))
