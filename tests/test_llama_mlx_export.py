"""`ondevice convert --to mlx` of every Llama dialect, through the CLI: the directory loads in `mlx_lm.load`
(mlx-lm's weight names and config keys, a tokenizer beside them) and mlx-lm computes our logits; it reads
back through `load_mlx_checkpoint` and the mlx backend into the very model it was written from; `ondevice
verify EXPORT --reference CKPT` passes; and `ondevice verify CKPT --backend mlx` passes.

Checkpoints are tiny random-init ones (`make_llama`) whose norm weights and biases are randomised
(transformers initialises them to ones and zeros, which would hide a misplaced or missing one); every
width is a multiple of the quantization group of 32, so that every layer really is quantized."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from convert.checkpoint import load_checkpoint
from convert.mlx_checkpoint import load_mlx_checkpoint
from ondevice.backends.mlx import load
from ondevice.cli import app
from ondevice.parity import TOLERANCES, compare

FP32 = TOLERANCES["fp32"]
GROUP = 32
runner = CliRunner()

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
# dialect -> (model_type, make_llama overrides). Widths (C, H*D, G*D, F) are multiples of 32.
DIALECTS = {
    "llama": ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            intermediate_size=64)),  # GQA 2:1, untied head, default RoPE
    "llama3": ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             intermediate_size=96, tie_word_embeddings=True, initializer_range=0.1,
                             rope_parameters=LLAMA3_ROPE)),  # llama3 RoPE, tied head, head_dim != C/H
    "mistral": ("mistral", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                intermediate_size=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2": ("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                            tie_word_embeddings=True)),  # q/k/v biases, no o bias
    "qwen3": ("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                            intermediate_size=64)),  # q/k RMSNorm
}  # fmt: skip
MLX_LM_CLASS = {"llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _randomise_norms_and_biases(directory, seed: int) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if "norm" in name or name.endswith(".bias"):
            tensors[name] = tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, path, metadata={"format": "pt"})


class Dialect:
    """One dialect's checkpoint and its CLI exports, made once per module and on first use."""

    def __init__(self, name: str, root):
        from tests.checkpoints import make_llama
        from tests.tiny_tokenizer import write_tokenizer

        self.name, self.root = name, root
        model_type, overrides = DIALECTS[name]
        self.checkpoint = make_llama(root / "hf", model_type, seed=3, **overrides)
        _randomise_norms_and_biases(self.checkpoint, seed=4)
        self.tokenizer = write_tokenizer(self.checkpoint, 211)  # mlx_lm.load needs one: the export copies it
        self.config = load_checkpoint(self.checkpoint).config
        self.exports: dict[tuple, object] = {}

    def export(self, bits: int | None, dtype: str = "fp32"):
        if (bits, dtype) not in self.exports:
            out = self.root / f"mlx-{dtype}-q{bits}"
            quantize = ["--quantize", bits, "--group-size", GROUP] if bits else []
            result = _run("convert", self.checkpoint, "--to", "mlx", "--out", out, "--dtype", dtype, *quantize)
            assert result.exit_code == 0, result.output
            self.exports[(bits, dtype)] = out
        return self.exports[(bits, dtype)]


@pytest.fixture(scope="module", params=list(DIALECTS))
def dialect(request, tmp_path_factory) -> Dialect:
    return Dialect(request.param, tmp_path_factory.mktemp(request.param))


def _ids(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 211, size=n).tolist()


def _mlx_lm_logits(model, ids) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_mlx_lm_loads_the_cli_export_and_gives_our_logits(dialect, bits):
    import mlx_lm

    out = dialect.export(bits)
    theirs, tokenizer = mlx_lm.load(str(out))
    assert type(theirs).__module__ == f"mlx_lm.models.{MLX_LM_CLASS[dialect.name]}"
    text = "the quick brown fox"  # the checkpoint's tokenizer came along
    assert tokenizer.encode(text) == dialect.tokenizer.encode(text) and tokenizer.decode(tokenizer.encode(text)) == text
    ids = _ids(100, seed=1)
    got = _mlx_lm_logits(theirs, ids)
    if bits is None:  # against our fp32 model straight from the Hugging Face checkpoint
        want = load(load_checkpoint(dialect.checkpoint)).prefill(ids)
        c = compare("logits", got, want)
        assert c.within(FP32) and c.cosine >= 0.99999, c
    # against our own model on the same export (quantized: the same quantized weights), and against our
    # model quantized in memory from the checkpoint: what the mlx backend runs either way
    for ours in (
        load(load_mlx_checkpoint(out), dtype=None),
        load(load_checkpoint(dialect.checkpoint), quantize=bits, group_size=GROUP),
    ):
        c = compare("logits", got, ours.prefill(ids))
        assert c.within(FP32), c  # both quantized or both not: rounding of op order only


@pytest.mark.parametrize("bits", [None, 4])
def test_the_export_is_in_mlx_lm_names_and_config(dialect, bits):
    out = dialect.export(bits)
    config = json.loads((out / "config.json").read_text())
    names = set(mx.load(str(out / "model.safetensors")))
    cfg = dialect.config
    assert all(n.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")) for n in names)
    assert ("lm_head.weight" in names) != cfg.tie_word_embeddings  # a tied head is not written
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == cfg.qk_norm
    assert ("model.layers.0.self_attn.q_proj.biases" in names) == (bits is not None)
    assert config["ondevice_mlx"]["names"] == "mlx-lm" and config["ondevice_mlx"]["mlx_lm_compatible"]
    assert config["tie_word_embeddings"] == cfg.tie_word_embeddings and config["head_dim"] == cfg.head_dim
    assert config.get("quantization") == ({"group_size": GROUP, "bits": bits} if bits else None)
    assert (config["rope_scaling"] or {}).get("rope_type") == ("llama3" if dialect.name == "llama3" else None)


@pytest.mark.parametrize("bits", [None, 4])
def test_the_export_reads_back_into_the_model_it_was_written_from(dialect, bits):
    ckpt = load_mlx_checkpoint(dialect.export(bits))
    assert ckpt.config == dialect.config and ckpt.model_type == DIALECTS[dialect.name][0]
    assert ckpt.quantization == ({"bits": bits, "group_size": GROUP} if bits else None)
    ids = _ids(40, seed=2)
    direct = load(load_checkpoint(dialect.checkpoint), quantize=bits, group_size=GROUP)
    np.testing.assert_array_equal(load(ckpt, dtype=None).prefill(ids), direct.prefill(ids))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_verify_export_against_its_checkpoint_passes(dialect, dtype):
    """Lossless formats, whose greedy tokens must match too. (Quantized exports of these deliberately sharp
    random models, norms randomised, groups of 32, are measured in tests/test_llama_mlx_parity.py: their q8
    error, up to rel 9.4e-2, cosine 0.9989, is past verify's q8 bound, which was measured on milder models.)"""
    result = _run("verify", dialect.export(None, dtype), "--reference", dialect.checkpoint, "--seq-len", 48)
    assert result.exit_code == 0, result.output
    assert f"mlx export {dtype}" in result.output and "greedy tokens: 16/16 match" in result.output


def test_verify_checkpoint_on_the_mlx_backend_passes(dialect):
    result = _run("verify", dialect.checkpoint, "--backend", "mlx", "--seq-len", 48)
    assert result.exit_code == 0, result.output
    assert "mlx fp32" in result.output and "greedy tokens: 16/16 match" in result.output and "PASS" in result.output
