"""A user's mistake gets one line naming the file, key or limit, a non-zero exit, and no traceback."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from canonical.errors import CheckpointError, InputError
from convert.checkpoint import load_checkpoint
from ondevice.cli import app


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def gpt2_copy(tmp_path, gpt2_dir) -> Path:
    return Path(shutil.copytree(gpt2_dir, tmp_path / "ckpt"))


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_unknown_model_type(gpt2_copy):
    _edit_config(gpt2_copy, model_type="falcon")
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "config.json", "'falcon'", "not supported",
                          "supported: gpt2, bert, distilbert, llama, mistral, qwen2, qwen3")


def test_missing_tensor(gpt2_copy):
    _edit_weights(gpt2_copy, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "model.safetensors", "missing tensor 'h.1.mlp.c_fc.bias'")


def test_extra_tensor(gpt2_copy):
    _edit_weights(gpt2_copy, lambda s: s.update({"transformer.h.9.attn.c_attn.weight": torch.zeros(2, 2)}))
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "unexpected tensor 'transformer.h.9.attn.c_attn.weight'")


def test_tensor_of_the_wrong_shape(bert_dir, tmp_path):
    directory = Path(shutil.copytree(bert_dir, tmp_path / "bert"))
    _edit_weights(directory, lambda s: s.update(
        {"bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(95, 64)}))
    assert_one_line_error(run_cli("verify", str(directory)),
                          "'bert.encoder.layer.0.intermediate.dense.weight' has shape [95, 64]", "implies [96, 64]")


def test_config_that_contradicts_its_weights(gpt2_copy):
    _edit_config(gpt2_copy, n_layer=3)
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "missing tensor 'h.2.", "n_layer=3")
    _edit_config(gpt2_copy, n_layer=2, n_embd=96, n_head=4)
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "has shape", "n_embd=96")


def test_truncated_safetensors(gpt2_copy):
    path = gpt2_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "model.safetensors", "not a readable safetensors file")


def test_corrupt_safetensors_header(gpt2_copy):
    (gpt2_copy / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "not a readable safetensors file")


def test_sequence_longer_than_the_positions(gpt2_dir):
    assert_one_line_error(run_cli("verify", str(gpt2_dir), "--seq-len", "161"),
                          "sequence length 161", "160 positions", "n_positions")


def test_sequence_longer_than_the_positions_in_the_model_itself(gpt2_dir, bert_dir):
    from ane_model.kv_cache import KVCache
    from convert.registry import build_ane_model as build_model

    gpt2 = load_checkpoint(gpt2_dir)
    model = build_model(gpt2.config, gpt2.weights)
    with pytest.raises(InputError, match="161 tokens exceed the model's 160 positions"):
        model(torch.zeros(1, 161, dtype=torch.long))
    cache = KVCache(gpt2.config.num_layers, gpt2.config.hidden_size, capacity=16)
    model(torch.zeros(1, 10, dtype=torch.long), cache)
    with pytest.raises(InputError, match="17 tokens exceed the KV cache capacity of 16"):
        model(torch.zeros(1, 7, dtype=torch.long), cache)
    bert = load_checkpoint(bert_dir)
    with pytest.raises(InputError, match="max_position_embeddings"):
        build_model(bert.config, bert.weights)(torch.zeros(1, 161, dtype=torch.long))


def test_missing_directory_and_missing_weights(tmp_path, gpt2_copy):
    assert_one_line_error(run_cli("verify", str(tmp_path / "nope")), "nope", "nothing is downloaded")
    (gpt2_copy / "model.safetensors").unlink()
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "no weights found")
    assert_one_line_error(run_cli("verify", str(tmp_path)), "no config.json")


def test_invalid_config_values(gpt2_copy):
    _edit_config(gpt2_copy, n_embd=66)
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "n_embd=66 is not divisible by n_head=4")
    _edit_config(gpt2_copy, n_embd=64, activation_function="mish")
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "activation_function='mish' is not supported")
    (gpt2_copy / "config.json").write_text("{ not json")
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "config.json", "not valid JSON")


def test_pickled_code_in_pytorch_model_bin_is_refused(tmp_path, bert_dir):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    directory = Path(shutil.copytree(bert_dir, tmp_path / "evil"))
    (directory / "model.safetensors").unlink()
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a readable PyTorch weights file"):
        load_checkpoint(directory)


def test_shard_index_naming_a_missing_shard(tmp_path, gpt2_dir):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(gpt2_dir).save_pretrained(tmp_path / "s", max_shard_size="100KB")
    next((tmp_path / "s").glob("model-00002-*.safetensors")).unlink()
    assert_one_line_error(run_cli("verify", str(tmp_path / "s")), "model.safetensors.index.json", "does not exist")


def test_unknown_backend(gpt2_dir):
    assert_one_line_error(run_cli("verify", str(gpt2_dir), "--backend", "tpu"), "unknown backend 'tpu'")


def test_coreml_backend_on_a_checkpoint_says_how_to_get_a_package(gpt2_dir):
    assert_one_line_error(run_cli("verify", str(gpt2_dir), "--backend", "coreml"),
                          "the coreml backend runs a converted package")
