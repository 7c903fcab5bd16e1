"""Checkpoints that are broken in ways a config or a weights file can be: every number of config.json finite and
within what the package can address, NaN or inf weights, two sets of weights side by side, bytes that are not
a PyTorch file. Each is refused in one line naming the file, field or tensor, by every command that reads the
checkpoint, before anything is written; never a traceback, never a model that computes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.checkpoints import make_llama
from tests.cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from tests.tiny_tokenizer import write_tokenizer

    directory = make_llama(tmp_path_factory.mktemp("llama"), "llama", seed=5)
    write_tokenizer(directory, 211)
    return directory


def _copy_with(source: Path, root: Path, name: str, **fields) -> Path:
    directory = Path(shutil.copytree(source, root / name))
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for dotted, value in fields.items():
        *parents, key = dotted.split("__")
        inner = config
        for parent in parents:
            inner = inner.setdefault(parent, {})
        inner[key] = value
    path.write_text(json.dumps(config))  # float("inf") is written as JSON's Infinity, as a hand-edited config has it
    return directory


# (checkpoint, field (nested with __), value, fragment of the one line)
BAD_VALUES = [
    ("llama", "rope_parameters__rope_theta", float("inf"), "'rope_parameters.rope_theta' must be a finite number > 0"),
    ("llama", "rope_parameters__rope_theta", float("nan"), "'rope_parameters.rope_theta' must be a finite number"),
    ("llama", "rms_norm_eps", float("inf"), "'rms_norm_eps' must be a finite number > 0, got inf"),
    ("llama", "rms_norm_eps", 1e30, "'rms_norm_eps' is 1e+30, above 1"),
    ("llama", "rms_norm_eps", 0, "'rms_norm_eps' must be a finite number > 0, got 0"),
    (
        "llama",
        "max_position_embeddings",
        10**12,
        "'max_position_embeddings' is 1,000,000,000,000, beyond the 16,777,216 this package can address",
    ),
    ("llama", "eos_token_id", -3, "'eos_token_id' must be a token id"),
    ("llama", "tie_word_embeddings", "yes", "'tie_word_embeddings' must be true or false"),
    ("gpt2", "layer_norm_epsilon", float("nan"), "'layer_norm_epsilon' must be a finite number > 0, got nan"),
    ("gpt2", "bos_token_id", "start", "'bos_token_id' must be a token id"),
    ("gpt2", "tie_word_embeddings", 1, "'tie_word_embeddings' must be true or false"),
    ("bert", "layer_norm_eps", -1.0, "'layer_norm_eps' must be a finite number > 0, got -1.0"),
]


@pytest.mark.parametrize(
    ("family", "field", "value", "fragment"), BAD_VALUES, ids=[f"{f}-{k}-{v}" for f, k, v, _ in BAD_VALUES]
)
def test_config_values_out_of_range_are_named(family, field, value, fragment, llama_dir, gpt2_dir, bert_dir, tmp_path):
    source = {"llama": llama_dir, "gpt2": gpt2_dir, "bert": bert_dir}[family]
    directory = _copy_with(source, tmp_path, "bad", **{field: value})
    assert_one_line_error(run_cli("verify", directory), "config.json", fragment)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(
        run_cli("convert", directory, "--to", "coreml", "--out", tmp_path / "o.mlpackage"), fragment
    )  # the default context, which a 10^12-position config once broke
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if family != "bert":
        assert_one_line_error(run_cli("predict", "hello ", "--model", directory), fragment)


def test_a_model_stating_millions_of_positions_builds_only_the_rows_it_reaches(llama_dir, tmp_path):
    """16,777,216 positions are within bounds; the RoPE tables grow as positions are reached (a 2-layer model's
    tables of every position would be gigabytes), and the model still matches a copy that states 160."""
    from ane_model.layers import RotaryEmbedding
    from convert.checkpoint import load_checkpoint
    from convert.registry import build_ane_model

    huge = load_checkpoint(_copy_with(llama_dir, tmp_path, "huge", max_position_embeddings=1 << 24))
    small = load_checkpoint(llama_dir)
    model, reference = build_ane_model(huge.config, huge.weights), build_ane_model(small.config, small.weights)
    assert model.rotary.positions <= 4096
    ids = torch.arange(12)[None] % 200
    torch.testing.assert_close(model(ids), reference(ids), rtol=0, atol=0)
    model.rotary(1, 5000, 1)  # reaching past the first rows makes more, no more than twice as many as needed
    assert 5001 <= model.rotary.positions <= 10_002
    at_once = RotaryEmbedding(huge.config.rope_inverse_frequencies(), 5001)
    at_once.limit(5001)  # every row made in one go
    for grown, whole in zip(model.rotary(3, 4990, 2), at_once(3, 4990, 2), strict=True):
        assert torch.equal(grown, whole)


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(gpt2_dir, tmp_path, bad):
    directory = Path(shutil.copytree(gpt2_dir, tmp_path / "nan"))

    def poison(state):
        state["transformer.h.1.mlp.c_fc.weight"][3, 7] = bad

    _edit_weights(directory, poison)
    for args in (
        ["convert", directory, "--to", "mlx", "--out", tmp_path / "o"],
        ["convert", directory, "--to", "coreml", "--out", tmp_path / "o.mlpackage"],
        ["verify", directory],
        ["bench", "--model", directory, "--out", tmp_path / "b"],
    ):
        assert_one_line_error(
            run_cli(*args), "model.safetensors", "tensor 'transformer.h.1.mlp.c_fc.weight' holds 1 NaN or inf values"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_a_shard_index_beside_a_single_weights_file_is_refused(gpt2_dir, tmp_path):
    """transformers reads model.safetensors, a reader of the index the shards: two different models could be
    compared, so neither is guessed."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path / "both"
    AutoModelForCausalLM.from_pretrained(gpt2_dir).save_pretrained(directory, max_shard_size="100KB")
    shutil.copy2(gpt2_dir / "model.safetensors", directory / "model.safetensors")
    assert_one_line_error(
        run_cli("verify", directory),
        "holds both model.safetensors and model.safetensors.index.json",
        "remove the one that is stale",
    )


def test_random_bytes_are_not_called_pickled_code(gpt2_dir, tmp_path):
    directory = Path(shutil.copytree(gpt2_dir, tmp_path / "random"))
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(bytes(range(256)) * 16)
    line = assert_one_line_error(
        run_cli("verify", directory),
        "pytorch_model.bin: not a readable PyTorch weights file",
        "damaged, truncated or not a PyTorch file",
    )
    assert "run code" not in line


def test_a_real_torch_save_is_read(gpt2_dir, tmp_path):
    """The check above reads opcodes only: a torch.save of tensors still loads (and equals the safetensors)."""
    from convert.checkpoint import load_checkpoint

    directory = Path(shutil.copytree(gpt2_dir, tmp_path / "bin"))
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    read, original = load_checkpoint(directory), load_checkpoint(gpt2_dir)
    assert all(torch.equal(read.weights[k], original.weights[k]) for k in original.weights)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "calibration text is empty"),
        (b"\n  \n", "calibration text is empty"),
        (bytes(range(128, 256)) * 8, "calibration text is not UTF-8 text (byte 0x80 at offset 0)"),
    ],
)
def test_calibration_text_that_is_empty_or_binary(gpt2_dir, tmp_path, content, fragment):
    text = tmp_path / "calibration.txt"
    text.write_bytes(content)
    assert_one_line_error(
        run_cli(
            "convert",
            gpt2_dir,
            "--to",
            "coreml",
            "--out",
            tmp_path / "o.mlpackage",
            "--compress",
            "int4",
            "--calibration-text",
            text,
        ),
        "calibration.txt",
        fragment,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.txt"]


def test_a_full_disk_while_writing_mlx_weights(gpt2_dir, tmp_path, monkeypatch):
    """MLX reports a write that failed (a full disk) as a RuntimeError of its own; it is named in one line and the
    staging folder goes."""
    import mlx.core as mx

    def full(path, *args, **kwargs):
        raise RuntimeError(f"[write] Unable to write 74752 bytes to file {path}")

    monkeypatch.setattr(mx, "save_safetensors", full)
    assert_one_line_error(
        run_cli("convert", gpt2_dir, "--to", "mlx", "--out", tmp_path / "o"),
        "o/model.safetensors: could not be written",
        "is the disk full?",
    )
    assert list(tmp_path.iterdir()) == []
