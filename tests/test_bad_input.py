"""A user's mistake gets one line naming the file, key or limit, a non-zero exit, and no traceback."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from canonical.errors import CheckpointError, InputError, OndeviceError
from convert.checkpoint import load_checkpoint
from tests.cli import assert_one_line_error, run_cli


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
    assert_one_line_error(
        run_cli("verify", str(gpt2_copy)),
        "config.json",
        "'falcon'",
        "not supported",
        "supported: gpt2, bert, distilbert, llama, mistral, qwen2, qwen3",
    )


def test_missing_tensor(gpt2_copy):
    _edit_weights(gpt2_copy, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "model.safetensors", "missing tensor 'h.1.mlp.c_fc.bias'")


def test_extra_tensor(gpt2_copy):
    _edit_weights(gpt2_copy, lambda s: s.update({"transformer.h.9.attn.c_attn.weight": torch.zeros(2, 2)}))
    assert_one_line_error(run_cli("verify", str(gpt2_copy)), "unexpected tensor 'transformer.h.9.attn.c_attn.weight'")


def test_tensor_of_the_wrong_shape(bert_dir, tmp_path):
    directory = Path(shutil.copytree(bert_dir, tmp_path / "bert"))
    _edit_weights(
        directory, lambda s: s.update({"bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(95, 64)})
    )
    assert_one_line_error(
        run_cli("verify", str(directory)),
        "'bert.encoder.layer.0.intermediate.dense.weight' has shape [95, 64]",
        "implies [96, 64]",
    )


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
    assert_one_line_error(
        run_cli("verify", str(gpt2_dir), "--seq-len", "161"), "sequence length 161", "160 positions", "n_positions"
    )


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


class _Payload:
    """Pickled as a call of `print`: what a malicious pytorch_model.bin holds (code, run as it is unpickled)."""

    def __reduce__(self):
        return (print, ("this must never run",))


def _pickled_code_checkpoint(source: Path, tmp_path: Path) -> Path:
    directory = Path(shutil.copytree(source, tmp_path / "evil"))
    (directory / "model.safetensors").unlink()
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Payload()}, f)
    return directory


def test_pickled_code_in_pytorch_model_bin_is_refused(tmp_path, bert_dir):
    directory = _pickled_code_checkpoint(bert_dir, tmp_path)
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
    assert_one_line_error(
        run_cli("verify", str(gpt2_dir), "--backend", "coreml"), "the coreml backend runs a converted package"
    )


# Option values and options that do not apply: one line naming the option and what to use instead, exit 2,
# before anything is loaded or written. {gpt2}, {bert}: checkpoints; {tmp}: an empty folder; {file}: a file.
BAD_OPTIONS = [
    # values out of range, 0 as a real value
    (["predict", "x ", "-k", "0"], ["-k 0: must be at least 1"]),
    (["predict", "x ", "-k", "-1"], ["-k -1: must be at least 1"]),
    (["predict", "--eval", "{file}", "--eval-lines", "0"], ["--eval-lines 0: must be at least 1"]),
    (["predict", "--eval", "{file}", "--eval-lines", "-1"], ["--eval-lines -1: must be at least 1"]),
    (["predict", "--eval-lines", "5", "x"], ["--eval-lines applies with --eval FILE only"]),
    (["predict", "--eval", "{tmp}/missing.txt"], ["missing.txt: cannot be read (no such file)"]),
    (["verify", "{gpt2}", "--seed", "-1"], ["--seed -1: must be 0 or more"]),
    (["verify", "{gpt2}", "--seq-len", "0"], ["--seq-len 0: must be at least 1"]),
    (["verify", "{gpt2}", "--reference", "{gpt2}"], ["--reference applies to a .mlpackage or an MLX directory"]),
    (
        ["verify", "{tmp}/p.mlpackage", "--reference", "{gpt2}", "--backend", "mlx"],
        ["--backend applies to a checkpoint"],
    ),
    (
        ["convert", "{gpt2}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--context", "0"],
        ["--context 0: must be at least 2"],
    ),
    (
        ["convert", "{gpt2}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--seq-len", "0"],
        ["--seq-len 0: must be at least 1"],
    ),
    # a folder --out is a chunked model for a causal LM (tests/test_coreml_chunked.py); an encoder is one package
    (["convert", "{bert}", "--to", "coreml", "--out", "{tmp}/o"], ["must end in .mlpackage", "is an encoder"]),
    (["bench", "--threads", "0"], ["--threads 0: must be at least 1"]),
    (["bench", "--threads", "-1"], ["--threads -1: must be at least 1"]),
    (["bench", "--repeats", "0"], ["--repeats 0: must be at least 1"]),
    (["bench", "--seq-lens", "16,0"], ["--seq-lens 0: must be at least 1"]),
    (["bench", "--out", "{file}"], ["is a file; --out takes a directory"]),
    # options that do not apply to the target or the family: refused, with what to use instead
    (
        ["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--compress", "int4"],
        ["--compress applies to --to coreml only", "--quantize 4 or 8"],
    ),
    (
        ["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--target", "iOS15"],
        ["--target applies to --to coreml only"],
    ),
    (
        ["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--context", "64"],
        ["--context applies to --to coreml only"],
    ),
    (
        ["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--group-size", "32"],
        ["--group-size applies with --quantize 4 or 8 only"],
    ),
    (
        ["convert", "{gpt2}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--quantize", "4"],
        ["--quantize applies to --to mlx only", "--compress int8, int4"],
    ),
    (
        ["convert", "{bert}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--kv-cache", "io"],
        ["--kv-cache applies to causal LMs", "bert is an encoder"],
    ),
    (
        ["convert", "{bert}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--context", "64"],
        ["--context applies to causal LMs"],
    ),
    (["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--quantize", "3"], ["--quantize 3: choose from 4, 8"]),
    (["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o", "--dtype", "int8"], ["--dtype int8: choose from"]),
    (
        ["convert", "{gpt2}", "--to", "coreml", "--out", "{tmp}/o.mlpackage", "--target", "macOS15", "--allow-large"],
        ["--allow-large applies to iOS targets", "drop --allow-large"],
    ),
    (
        ["convert", "{gpt2}", "--to", "mlx", "--out", "{tmp}/o.mlpackage"],
        ["an MLX directory named like a Core ML package", "--to coreml"],
    ),
    (["generate", "{gpt2}", "--ids", "1", "--top-k", "5"], ["--top-k applies with sampling only"]),
    (
        ["bench", "--model", "{bert}", "--backends", "mlx_lm"],
        ["--backends mlx_lm applies to causal LMs", "reference, torch-ane, mlx or coreml"],
    ),
    (
        ["bench", "--model", "{gpt2}", "--seq-lens", "16,100000"],
        ["--seq-lens 100000: longer than", "160 positions (n_positions)"],
    ),
    (["bench", "--keystrokes", "-1"], ["--keystrokes -1: must be at least 0"]),
    # messages that say what happened
    (["convert", "{gpt2}", "--to", "mlx", "--out", "{gpt2}"], ["is the source checkpoint"]),  # not "pass --overwrite"
    (["convert", "{gpt2}", "--to", "mlx", "--out", ""], ["--out '': an empty path"]),  # not the working directory
    (["bench", "--out", " "], ["--out ' ': an empty path"]),
    # mistakes in the command line itself: one line too, naming where the help is
    (["verify", "--bogus"], ["No such option: --bogus", "(ondevice verify --help)"]),
    (["convert"], ["Missing argument 'checkpoint'", "(ondevice convert --help)"]),
    (["verify", "{gpt2}", "--seq-len", "x"], ["Invalid value for '--seq-len'"]),
    (["predict", "-k", "two", "x"], ["Invalid value for '-k'"]),
    (["nosuch"], ["No such command 'nosuch'", "(ondevice --help)"]),
    # outputs the filesystem cannot take
    (["convert", "{gpt2}", "--to", "mlx", "--out", "/nonexistent-ondevice-dir/o"], ["output directory does not exist"]),
    (["convert", "{gpt2}", "--to", "mlx", "--out", "{file}/o"], ["output directory does not exist"]),
    (["convert", "{gpt2}", "--to", "mlx", "--out", "/proc/ondevice-o"], ["/proc: cannot write here"]),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_OPTIONS, ids=[" ".join(a[:1] + a[2:])[:60] for a, _ in BAD_OPTIONS])
def test_bad_option_values_get_one_line(args, fragments, gpt2_dir, bert_dir, tmp_path):
    (tmp_path / "text.txt").write_text("one line of text\n")
    values = {"gpt2": str(gpt2_dir), "bert": str(bert_dir), "tmp": str(tmp_path), "file": str(tmp_path / "text.txt")}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(run_cli(*[a.format(**values) for a in args]), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_output_in_a_folder_that_cannot_be_written(gpt2_dir, tmp_path, monkeypatch):
    """A read-only or system folder: one line naming the folder and the reason (root ignores permission bits,
    so the refusal is simulated where the staging folder is made)."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    assert_one_line_error(
        run_cli("convert", str(gpt2_dir), "--to", "mlx", "--out", str(tmp_path / "o")),
        f"{tmp_path}: cannot write here (Permission denied)",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_gets_one_line_and_leaves_nothing(gpt2_dir, tmp_path, monkeypatch):
    import errno

    import convert.mlx_export

    def full(source, work):
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "tokenizer.json"))

    monkeypatch.setattr(convert.mlx_export, "_copy_tokenizer", full)
    assert_one_line_error(
        run_cli("convert", str(gpt2_dir), "--to", "mlx", "--out", str(tmp_path / "o")),
        "tokenizer.json: No space left on device",
    )
    assert list(tmp_path.iterdir()) == []


def test_pickle_refusal_does_not_advise_running_the_pickle(tmp_path, bert_dir):
    directory = _pickled_code_checkpoint(bert_dir, tmp_path)
    line = assert_one_line_error(run_cli("verify", str(directory)), "pytorch_model.bin", "could run code")
    assert "weights_only" not in line and "this must never run" not in line


def test_an_early_ctrl_c_prints_one_word(gpt2_dir, tmp_path):
    """Ctrl-C while the command is still starting (importing) or converting: `interrupted`, exit 130, no
    traceback, nothing written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [
        str(Path(sys.executable).with_name("ondevice")),
        "convert",
        str(gpt2_dir),
        "--to",
        "mlx",
        "--out",
        str(tmp_path / "o"),
    ]
    for delay in (0.4, 0.8, 1.5):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1")
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        if process.returncode == 0:  # finished before the signal: nothing to check
            shutil.rmtree(tmp_path / "o")
            continue
        assert process.returncode == 130, (delay, stderr)
        assert "Traceback" not in stderr and stderr.strip() == "interrupted", (delay, stderr)
        assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_that_a_library_swallowed_still_exits_130(monkeypatch):
    """A Ctrl-C inside torch's import of numpy is swallowed by torch's C module; the next import of numpy then
    fails with a RuntimeError (CI met this). What fails after a Ctrl-C is reported as `interrupted`, exit 130."""
    import contextlib
    import os
    import signal

    import typer

    from ondevice import startup
    from ondevice.commands.common import one_line_errors

    monkeypatch.setattr(startup, "_interrupt_received", False)

    handlers = []

    @one_line_errors
    def command() -> None:
        handlers.append(signal.getsignal(signal.SIGINT))
        with contextlib.suppress(KeyboardInterrupt):  # what torch's C module does with an error importing numpy
            os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("CPU dispatcher tracer already initlized")

    previous = signal.signal(signal.SIGINT, startup.exit_on_interrupt)  # as the console script starts
    try:
        with pytest.raises(typer.Exit) as exit_info:
            command()
        assert handlers == [startup.unwind_on_interrupt]  # while the command ran, Ctrl-C unwinds
        # once it has finished (its status decided), a Ctrl-C would only turn that status into a death by SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_info.value.exit_code == 130 and startup.interrupted()

    @one_line_errors
    def failing() -> None:
        raise RuntimeError("CPU dispatcher tracer already initlized")

    monkeypatch.setattr(startup, "_interrupt_received", False)  # without a Ctrl-C the same error is a bug
    with pytest.raises(RuntimeError, match="tracer"):
        failing()


def test_an_mlx_directory_is_neither_a_torch_checkpoint_nor_a_reference(gpt2_dir, tmp_path):
    from convert.mlx_export import export_mlx
    from ondevice.backends import load_backend
    from ondevice.reference import load_reference

    export = load_checkpoint(export_mlx(gpt2_dir, tmp_path / "mlx", progress=False))
    with pytest.raises(OndeviceError, match="an MLX directory runs on the mlx backend, not torch-ane"):
        load_backend("torch-ane", export)
    with pytest.raises(CheckpointError, match="an MLX directory is not a reference"):
        load_reference(export)


@pytest.mark.parametrize("option", ["--allow-large", "--one-process"])
def test_core_ml_only_options(gpt2_dir, tmp_path, option):
    assert_one_line_error(
        run_cli("convert", str(gpt2_dir), "--to", "mlx", "--out", str(tmp_path / "m"), option),
        f"{option} applies to --to coreml only",
    )
    assert not (tmp_path / "m").exists()
