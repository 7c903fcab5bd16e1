"""The Llama family on MLX (`mlx_model/llama.py`) against transformers on CPU, one case per dialect and
odd shape, plus mlx-lm running our export (`convert/mlx_lm_llama.py`).

Checkpoints are tiny random-init ones (`make_llama`) whose norm weights and biases are then randomised
(transformers initialises them to ones and zeros, which would hide a misplaced or missing one). Every
width divides the quantization group of 32, so every layer is really quantized. MLX's CPU matmul is
~25x slower than torch's here: the models stay small."""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from canonical.errors import InputError
from canonical.llama import LlamaConfig
from convert.hf_common import read_config_json
from convert.hf_llama import read_config as llama_config
from convert.hf_llama import read_weights as llama_weights
from convert.mlx_lm_llama import (
    from_mlx_lm,
    mlx_lm_compatible,
    mlx_lm_config,
    mlx_lm_incompatibility,
    mlx_lm_model_type,
    to_mlx_lm,
)
from convert.weights import read_raw_weights
from mlx_model.cache import KVCache
from mlx_model.layers import DTYPES
from mlx_model.llama import LlamaModel
from ondevice.parity import TOLERANCES, compare

FP32 = TOLERANCES["fp32"]
GROUP = 32
SEQ = 150  # positions 0..149 of 160: far past the llama3 case's original context of 32

# name -> (dialect, make_llama overrides). Widths: C, H*D, F all multiples of 32.
CASES = {
    # GQA 3:1, head_dim 16 = C/H, untied, default RoPE
    "llama": ("llama", dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                            intermediate_size=64)),
    # GQA 7:1: 7 heads of 32 sharing one KV head, tied, biases on q/k/v/o and the MLP, and llama3 RoPE from
    # an original context of 32: with D=32 its wavelengths (6.3, 11, 20, 35, ...) fall in all three bands
    # (kept < 8, blended 8..32, divided by the factor > 32). Init std 0.1: at width 224, 0.2 makes a
    # model so sharp that its reduced-precision figures say more about the random init than about MLX.
    "llama3_mqa": ("llama", dict(hidden_size=224, num_attention_heads=7, num_key_value_heads=1, head_dim=32,
                                 intermediate_size=96, initializer_range=0.1, tie_word_embeddings=True,
                                 attention_bias=True, mlp_bias=True,
                                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32})),
    # plain multi-head attention (4 heads of 16, each its own KV head), theta 1e6
    "mistral": ("mistral", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                intermediate_size=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # q/k/v biases without an o bias, tied
    "qwen2": ("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                            tie_word_embeddings=True)),
    # q/k norm, head_dim 32 != C/H (H*D = 128, C = 64), linear RoPE scaling
    "qwen3": ("qwen3", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                            intermediate_size=64, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                                   "factor": 2.0})),
}  # fmt: skip


class Case(NamedTuple):
    name: str
    directory: object
    cfg: LlamaConfig
    weights: dict  # canonical, from the Llama reader
    reference: torch.nn.Module  # transformers' *ForCausalLM, fp32

    def model(self, dtype: str = "fp32", bits: int | None = None) -> LlamaModel:
        return LlamaModel.from_canonical(self.cfg, self.weights, DTYPES[dtype], bits, GROUP)


def _randomise_norms_and_biases(directory, seed: int) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if "norm" in name or name.endswith(".bias"):
            tensors[name] = tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """transformers on these tiny models is all per-op overhead, which extra threads only multiply (10x
    slower greedy loops on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    import transformers

    from tests.checkpoints import make_llama

    dialect, overrides = CASES[request.param]
    directory = make_llama(tmp_path_factory.mktemp(request.param), dialect, seed=7, **overrides)
    _randomise_norms_and_biases(directory, seed=8)
    raw = read_config_json(directory)
    cfg = llama_config(raw, raw["model_type"], directory)
    _, weights = llama_weights(cfg, read_raw_weights(directory))
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return Case(request.param, directory, cfg, weights, reference)


class Runner:
    """prefill / decode / trim through our KV cache, as the mlx backend drives a causal model."""

    def __init__(self, model: LlamaModel, capacity: int | None = None):
        self.model = model
        self.cache = KVCache(model.cfg.num_layers, capacity or model.cfg.max_positions)

    def prefill(self, ids) -> np.ndarray:
        logits = self.model(mx.array([list(ids)], dtype=mx.int32), self.cache)[0]
        return np.array(logits.astype(mx.float32))

    def decode(self, token: int) -> np.ndarray:
        return self.prefill([token])[0]

    def trim(self, length: int) -> None:
        self.cache.trim(length)


def _ids(cfg: LlamaConfig, n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=n).tolist()


def _reference_logits(case: Case, ids) -> np.ndarray:
    with torch.no_grad():
        return case.reference(torch.tensor([list(ids)])).logits[0].float().numpy()


def _ours(model: LlamaModel, ids) -> np.ndarray:
    return np.array(model(mx.array([list(ids)], dtype=mx.int32))[0].astype(mx.float32))


def _reference_greedy(case: Case, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(_reference_logits(case, ids)[-1].argmax()))
    return ids[len(prompt) :]


def _greedy(runner: Runner, prompt: list[int], steps: int) -> list[int]:
    runner.trim(0)
    logits, tokens = runner.prefill(prompt)[-1], []
    for _ in range(steps):
        tokens.append(int(logits.argmax()))
        logits = runner.decode(tokens[-1])
    return tokens


# --- fp32 against transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 7, SEQ])
def test_fp32_logits_match_transformers(case, seq):
    ids = _ids(case.cfg, seq)
    c = compare("logits", _ours(case.model(), ids), _reference_logits(case, ids))
    assert c.within(FP32), c


def test_32_greedy_tokens_match_transformers(case):
    prompt = _ids(case.cfg, 9, seed=4)
    ours = _greedy(Runner(case.model()), prompt, 32)
    assert ours == _reference_greedy(case, prompt, 32)
    assert len(set(ours)) > 3  # a real continuation, not one token repeated


def test_prefill_then_decode_equals_one_forward(case):
    ids = _ids(case.cfg, 60, seed=3)
    runner = Runner(case.model())
    full = runner.prefill(ids)
    runner.trim(0)
    stepwise = [runner.prefill(ids[:10])] + [runner.decode(t)[None] for t in ids[10:37]] + [runner.prefill(ids[37:])]
    assert runner.cache.length == len(ids)
    c = compare("logits", np.concatenate(stepwise), full)
    assert c.within(FP32), c


def test_trim_then_decode_is_bit_identical_to_a_fresh_run(case, monkeypatch):
    import mlx_model.cache

    monkeypatch.setattr(mlx_model.cache, "STEP", 8)  # the buffers grow (and copy) several times
    ids, model = _ids(case.cfg, 30, seed=5), case.model()
    runner = Runner(model)
    runner.prefill(ids[:6])
    for t in ids[6:20]:
        runner.decode(t)
    runner.trim(11)  # back past a buffer growth
    after_trim = [runner.decode(t) for t in [7, 8, 9, *ids[20:30]]]
    fresh = Runner(model)
    fresh.prefill(ids[:11])
    expected = [fresh.decode(t) for t in [7, 8, 9, *ids[20:30]]]
    np.testing.assert_array_equal(np.stack(after_trim), np.stack(expected))


def test_positions_beyond_max_position_embeddings_are_refused(case):
    model = case.model()
    with pytest.raises(InputError, match="exceed the model's 160 positions"):
        model(mx.array([_ids(case.cfg, 161)]))
    runner = Runner(model, capacity=1000)  # the model refuses, not only the cache
    runner.prefill(_ids(case.cfg, 150))
    with pytest.raises(InputError, match="161 tokens exceed"):
        runner.prefill(_ids(case.cfg, 11))
    assert runner.cache.length == 150


# --- reduced precision: measured, then bounded -----------------------------------------------------
# Setup of every figure below: the five cases above (2 layers, V=211, norms and biases randomised),
# SEQ=150 random ids, logits against transformers fp32; quantization in groups of 32 with fp32
# activations (as tests/test_mlx_parity.py explains, MLX's CPU runs fp16-activation quantized matmuls
# far slower). "top1": teacher-forced next-token agreement over the 150 positions. Measured on mlx
# 0.32.4 CPU (rel = max-abs error / reference scale):
#               fp16                    bf16                    q8                      q4
#   llama       1.4e-2 .999983 1.000    6.5e-2 .99928 0.953     9.4e-2 .99886 0.920     0.99 0.788 0.227
#   llama3_mqa  3.9e-3 .999996 0.973    4.0e-2 .99969 0.940     4.6e-2 .99953 0.953     0.70 0.896 0.460
#   mistral     6.2e-3 .999994 0.993    4.9e-2 .99959 0.973     6.5e-2 .99938 0.973     1.09 0.838 0.420
#   qwen2       5.7e-3 .999994 0.993    6.0e-2 .99962 0.953     8.3e-2 .99937 0.933     0.76 0.861 0.400
#   qwen3       3.8e-3 .999997 1.000    3.7e-2 .99980 0.980     3.4e-2 .99973 0.967     0.56 0.932 0.553
# (each: rel, cosine, top1). Bounds: ~2x the worst case in rel and in (1 - cos), top1 a few points
# below the worst. These random models (init std 0.2 at widths 64-96) are much sharper than trained
# ones, so 4-bit weights (15 steps per group) move their logits a lot; the q4 bound says only "the same
# function, far better than chance (1/211)", and `test_quantized_kernel_equals_dequantized_weights` shows
# the loss is the rounding of the weights and not our code. Free-running greedy decoding is not asserted
# below fp32: at fp16 one flipped near-tie in 150 positions (top1 0.993) already changes a continuation.
BOUNDS = {  # (dtype, bits): (rel_max_abs <=, cosine >=, top1 >=)
    ("fp16", None): (3e-2, 0.99995, 0.93),
    ("bf16", None): (0.13, 0.9985, 0.88),
    ("fp32", 8): (0.19, 0.9975, 0.85),
    ("fp32", 4): (2.0, 0.55, 0.12),
}


@pytest.mark.parametrize(("dtype", "bits"), list(BOUNDS))
def test_reduced_precision_within_measured_bounds(case, dtype, bits):
    ids = _ids(case.cfg, SEQ)
    want = _reference_logits(case, ids)
    got = _ours(case.model(dtype, bits), ids)
    c, top1 = compare("logits", got, want), float(np.mean(got.argmax(-1) == want.argmax(-1)))
    rel, cos, agree = BOUNDS[(dtype, bits)]
    assert c.rel_max_abs <= rel and c.cosine >= cos and top1 >= agree, (c, top1)


def test_quantized_kernel_equals_dequantized_weights(case):
    """The 4-bit model computes what fp32 computes on its dequantized weights: its loss is the rounding of
    the weights, not our code."""
    quantized = case.model("fp32", 4)
    params = dict(tree_flatten(quantized.parameters()))
    plain = {}
    for name, array in params.items():
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.weight" in params:
            continue
        if name.endswith(".weight") and f"{base}.scales" in params:
            array = mx.dequantize(array, params[f"{base}.scales"], params[f"{base}.biases"], group_size=GROUP, bits=4)
        plain[name] = array
    ids = _ids(case.cfg, 40)
    c = compare("logits", _ours(quantized, ids), _ours(LlamaModel.from_canonical(case.cfg, plain), ids))
    assert c.within(FP32), c


def test_every_layer_is_quantized(case):
    quantized = dict(tree_flatten(case.model("fp32", 4).parameters()))
    plain = dict(tree_flatten(case.model().parameters()))
    layers = {n.rsplit(".", 1)[0] for n in plain if n.endswith(".weight") and not n.endswith("norm.weight")}
    assert layers, plain
    assert [n for n in sorted(layers) if f"{n}.scales" not in quantized] == []


# --- mlx-lm ----------------------------------------------------------------------------------------


def _export_for_mlx_lm(case: Case, cfg: LlamaConfig, model: LlamaModel, out, bits: int | None):
    """What the exporter writes: mlx-lm's weight names and config, a tokenizer (mlx_lm.load needs one)."""
    from tokenizers import Tokenizer, models

    out.mkdir()
    weights = to_mlx_lm(dict(tree_flatten(model.parameters())), cfg)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = mlx_lm_config(cfg, json.loads((case.directory / "config.json").read_text()))
    if bits:
        config["quantization"] = {"group_size": GROUP, "bits": bits}
    (out / "config.json").write_text(json.dumps(config))
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(cfg.vocab_size)}, unk_token="w0")).save(
        str(out / "tokenizer.json")
    )
    return weights


@pytest.mark.parametrize("bits", [None, 4])
def test_mlx_lm_runs_the_export_with_our_logits(case, tmp_path, bits):
    import mlx_lm

    assert mlx_lm_compatible(case.cfg)
    ours = case.model("fp32", bits)
    _export_for_mlx_lm(case, case.cfg, ours, tmp_path / "mlx", bits)
    theirs, _ = mlx_lm.load(str(tmp_path / "mlx"))
    expected_class = {"mistral": "llama"}.get(mlx_lm_model_type(case.cfg), mlx_lm_model_type(case.cfg))
    assert type(theirs).__module__ == f"mlx_lm.models.{expected_class}"
    ids = _ids(case.cfg, SEQ, seed=6)
    got = np.array(theirs(mx.array([ids]))[0].astype(mx.float32))
    c = compare("logits", got, _ours(ours, ids))
    assert c.within(FP32), c  # measured: rel <= 5.5e-6, cosine 1.0000000 (both quantized or both not)


@pytest.mark.parametrize("bits", [None, 8])
def test_mlx_lm_names_round_trip(case, bits):
    params = dict(tree_flatten(case.model("fp32", bits).parameters()))
    named = to_mlx_lm(params, case.cfg)
    assert all(n.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")) for n in named)
    assert ("lm_head.weight" in named) != case.cfg.tie_word_embeddings
    back = from_mlx_lm(named, case.cfg)
    assert set(back) == set(params)
    for name, array in params.items():
        assert mx.array_equal(back[name], array), name


def test_missing_attention_biases_are_written_as_zeros(tmp_path):
    """A q/k/v-bias-only config that mlx-lm's qwen2 cannot hold (here: called a llama) goes to its llama
    class, with an o bias of zeros: same logits, and the zeros are gone again on the way back."""
    import mlx_lm

    from tests.checkpoints import make_llama

    dialect, overrides = CASES["qwen2"]

    directory = make_llama(tmp_path / "qwen2", dialect, seed=7, **overrides)
    _randomise_norms_and_biases(directory, seed=8)
    raw = read_config_json(directory)
    cfg = dataclasses.replace(llama_config(raw, "qwen2", directory), dialect="llama")
    case = Case("qwen2_as_llama", directory, cfg, llama_weights(cfg, read_raw_weights(directory))[1], None)
    assert mlx_lm_model_type(cfg) == "llama" and cfg.attention_bias and not cfg.attention_out_bias
    ours = case.model()
    named = _export_for_mlx_lm(case, cfg, ours, tmp_path / "mlx", None)
    assert not named["model.layers.0.self_attn.o_proj.bias"].any()
    assert set(from_mlx_lm(named, cfg)) == set(dict(tree_flatten(ours.parameters())))
    theirs, _ = mlx_lm.load(str(tmp_path / "mlx"))
    ids = _ids(cfg, 40)
    c = compare("logits", np.array(theirs(mx.array([ids]))[0]), _ours(ours, ids))
    assert c.within(FP32), c


def test_mlx_lm_compatibility_rules():
    base = LlamaConfig(vocab_size=64, max_positions=64, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=16, intermediate_size=64)  # fmt: skip
    qwen2 = dataclasses.replace(base, dialect="qwen2", attention_bias=True)
    qwen3 = dataclasses.replace(base, dialect="qwen3", qk_norm=True, head_dim=32)
    assert [mlx_lm_model_type(c) for c in (base, dataclasses.replace(base, dialect="mistral"), qwen2, qwen3)] == [
        "llama", "mistral", "qwen2", "qwen3"
    ]  # fmt: skip
    # mlx-lm's qwen2 derives head_dim from the width and has no MLP bias: its llama takes those
    assert mlx_lm_model_type(dataclasses.replace(qwen2, head_dim=32)) == "llama"
    assert mlx_lm_model_type(dataclasses.replace(qwen2, mlp_bias=True)) == "llama"
    for compatible in (
        base,
        qwen2,
        qwen3,
        dataclasses.replace(base, attention_bias=True, attention_out_bias=True),
        dataclasses.replace(base, attention_out_bias=True),
        dataclasses.replace(base, rope_type="llama3"),
    ):
        assert mlx_lm_compatible(compatible), compatible
    for bias in ("attention_bias", "attention_out_bias", "mlp_bias"):  # qwen3 has no bias anywhere
        cfg = dataclasses.replace(qwen3, **{bias: True})
        assert not mlx_lm_compatible(cfg) and "q/k norm" in mlx_lm_incompatibility(cfg)
    assert not mlx_lm_compatible(dataclasses.replace(base, activation="gelu"))

    # the config: our values win over the source's, and keys that would change mlx-lm's model go
    source = {"model_type": "llama", "hidden_size": 1, "sliding_window": 8, "layer_types": ["sliding_attention"],
              "quantization_config": {"quant_method": "gptq"}, "rope_scaling": {"type": "dynamic", "factor": 2.0},
              "eos_token_id": [2, 3], "architectures": ["LlamaForCausalLM"]}  # fmt: skip
    config = mlx_lm_config(dataclasses.replace(base, rope_type="linear", rope_factor=4.0), source)
    assert config["hidden_size"] == 64 and config["sliding_window"] is None and "quantization_config" not in config
    assert config["layer_types"] == ["full_attention"] and config["rope_scaling"]["factor"] == 4.0
    assert config["eos_token_id"] == [2, 3] and config["architectures"] == ["LlamaForCausalLM"]
