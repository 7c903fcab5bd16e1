"""Parity of the ANE-layout Llama family (ane_model/llama.py) with transformers on the CPU, the contract.

Random checkpoints of every dialect (Llama, Mistral, Qwen2, Qwen3) in the shapes that break naive
implementations: grouped-query heads 3:1 and 7:1, one key/value head, a head width that is not hidden /
heads, Llama 3 RoPE scaling with a short original context, linear RoPE, tied and untied heads, biases,
q/k norm, bf16-saved weights, transformers-4 configs. Bounds from `ondevice.parity.TOLERANCES`: fp32
max-abs error <= 1e-4 of the reference's largest logit and cosine >= 0.99999; fp16 <= 2e-2 and 0.999."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ane_model.cpu_fused import FusedAttention, FusedConv1x1, FusedRMSNorm, FusedSwiGLU, fuse_for_cpu
from ane_model.kv_cache import KVCache
from ane_model.layers import ChunkedHead, RMSNormANE, RotaryEmbedding, apply_rotary, split_einsum_attention
from ane_model.llama import LlamaModel
from ane_model.static_cache import StaticKVCache
from canonical.errors import InputError
from canonical.llama import LlamaConfig
from convert.hf_common import read_config_json
from convert.hf_llama import read_config as llama_config
from convert.hf_llama import read_weights as llama_weights
from convert.weights import read_raw_weights
from ondevice.parity import TOLERANCES, compare
from tests.checkpoints import make_llama

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]
LONG = 150  # of max_position_embeddings=160: RoPE at positions near the end of the context

_LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
# name: (dialect, make_llama keyword arguments). Defaults: width 48, 6 heads of 8 sharing 2 kv heads, untied.
CASES = {
    "llama, GQA 3:1": ("llama", {}),
    "llama, GQA 7:1, width 56, tied": (
        "llama",
        dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=56, tie_word_embeddings=True),
    ),
    "llama3 rope, original context 16 x8, v4 config": ("llama", dict(rope_parameters=_LLAMA3_ROPE, config_style="v4")),
    "llama, linear rope x4, o/mlp biases, bf16": (
        "llama",
        dict(
            rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=4.0),
            attention_bias=True,
            mlp_bias=True,
            dtype=torch.bfloat16,
        ),
    ),
    "mistral, one kv head, v4 config": ("mistral", dict(num_key_value_heads=1, config_style="v4")),
    "mistral, 4 heads = 4 kv heads": ("mistral", dict(num_attention_heads=4, num_key_value_heads=4)),
    "qwen2, biases, tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2, bf16, v4 config": ("qwen2", dict(dtype=torch.bfloat16, config_style="v4")),
    "qwen3, head_dim 16 of width 48, 4 heads / 2 kv": (
        "qwen3",
        dict(head_dim=16, num_attention_heads=4, num_key_value_heads=2),
    ),
    "qwen3, 16 heads / 8 kv, tied": (
        "qwen3",
        dict(num_attention_heads=16, num_key_value_heads=8, head_dim=8, hidden_size=64, tie_word_embeddings=True),
    ),
}


def _canonical(directory):
    """Canonical config and weights through the Llama reader, as `load_checkpoint` reads them."""
    raw = read_config_json(directory)
    cfg = llama_config(raw, raw["model_type"], directory)
    return llama_weights(cfg, read_raw_weights(directory))


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request, tmp_path_factory):
    """(canonical config, canonical weights, the transformers model in fp32, its logits on `_ids(2, LONG)`)."""
    from transformers import AutoModelForCausalLM

    dialect, overrides = CASES[request.param]
    directory = make_llama(tmp_path_factory.mktemp("llama"), dialect, seed=3, **overrides)
    cfg, weights = _canonical(directory)
    assert (cfg.num_heads, cfg.num_kv_heads) == (
        overrides.get("num_attention_heads", 6),
        overrides.get("num_key_value_heads", 2),
    )
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = reference(_ids(cfg.vocab_size, 2, LONG)).logits  # (B, S, V)
    return cfg, weights, reference, logits


def _ids(vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).integers(0, vocab, size=(batch, length)))


def _bsv(logits: torch.Tensor) -> np.ndarray:
    """(B, V, 1, S) -> (B, S, V), as transformers lays logits out."""
    return logits[:, :, 0, :].transpose(1, 2).float().numpy()


@pytest.fixture(scope="module")
def model(case):
    cfg, weights, _, _ = case
    return LlamaModel.from_canonical(cfg, weights)


def test_logits_match_transformers_fp32(case, model):
    cfg, _, _, want = case
    with torch.inference_mode():
        got = _bsv(model(_ids(cfg.vocab_size, 2, LONG)))
    result = compare("logits", got, want.numpy())
    assert result.within(FP32), result
    # The end of the context alone: RoPE tables at the largest positions (a llama3 frequency off by one
    # float32 ulp already costs ~2e-5 here: the tables are built as transformers builds them).
    tail = compare("tail", got[:, LONG - 10 :], want[:, LONG - 10 :].numpy())
    assert tail.within(FP32), tail


def test_kv_cache_holds_only_the_key_value_heads(case, model):
    cfg, _, _, _ = case
    cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=16)
    with torch.inference_mode():
        model(_ids(cfg.vocab_size, 1, 5), cache)
    assert cache.keys[0].shape == cache.values[0].shape == (1, cfg.num_kv_heads * cfg.head_dim, 1, 16)
    if cfg.num_heads == 16 and cfg.num_kv_heads == 8:  # half the size a cache of repeated heads would be
        assert 2 * cache.keys[0].numel() == cfg.num_heads * cfg.head_dim * 16


def test_prefill_then_decode_equals_one_full_forward(case, model):
    cfg, _, _, _ = case
    ids = _ids(cfg.vocab_size, 2, 40, seed=5)
    with torch.inference_mode():
        full = model(ids)
        cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=64, batch=2)
        pieces = [model(ids[:, :25], cache)] + [model(ids[:, t : t + 1], cache) for t in range(25, 40)]
    assert cache.length == 40
    stepwise = torch.cat(pieces, dim=-1)
    # Same weights, same fp32 math, different summation order only: 1e-5 of scale is tight.
    assert (stepwise - full).abs().max() <= 1e-5 * full.abs().max()


def test_static_export_cache_equals_the_runtime_cache(case, model):
    """The export path: a runtime (1,) position tensor indexes the RoPE tables and the mask, every shape static."""
    cfg, _, _, _ = case
    ids, capacity = _ids(cfg.vocab_size, 1, 12, seed=6), 16
    shape = (cfg.num_layers, cfg.kv_width, 1, capacity)
    with torch.inference_mode():
        want = model(ids)
        static = StaticKVCache(torch.zeros(shape), torch.zeros(shape), torch.tensor([0], dtype=torch.int32))
        first = model(ids[:, :9], static)
        keys, values = static.new_keys, static.new_values
        steps = []
        for t in range(9, 12):
            static = StaticKVCache(keys, values, torch.tensor([t], dtype=torch.int32))
            steps.append(model(ids[:, t : t + 1], static))
            keys, values = static.new_keys, static.new_values
    got = torch.cat([first, *steps], dim=-1)
    assert compare("static", got.numpy(), want.numpy()).within(FP32)


def test_32_greedy_tokens_match_transformers_exactly(case):
    """Our decode loop (cpu-fused model, prefill then one token at a time through the KV cache) against
    transformers' greedy argmax over the whole sequence at every step."""
    cfg, weights, reference, _ = case
    prompt = _ids(cfg.vocab_size, 1, 12, seed=9)
    fused = fuse_for_cpu(LlamaModel.from_canonical(cfg, weights))
    cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=64)
    ours, theirs, sequence = [], [], prompt
    with torch.inference_mode():
        logits = fused(prompt, cache)
        for _ in range(32):
            ours.append(int(logits[0, :, 0, -1].argmax()))
            logits = fused(torch.tensor([[ours[-1]]]), cache)
        for _ in range(32):
            theirs.append(int(reference(sequence).logits[0, -1].argmax()))
            sequence = torch.cat([sequence, torch.tensor([[theirs[-1]]])], dim=1)
    assert ours == theirs
    assert len(set(theirs)) >= 4, "a degenerate continuation would make this test vacuous"


def test_cpu_fused_equals_the_ane_layout_it_runs(case, model):
    """The torch backend's fused kernels (ane_model/cpu_fused.py): the same function to fp32 rounding, for
    a batch of 3 and through the KV cache."""
    cfg, weights, _, _ = case
    fused = fuse_for_cpu(LlamaModel.from_canonical(cfg, weights))
    kinds = {type(m) for m in fused.modules()}
    assert {FusedAttention, FusedConv1x1, FusedRMSNorm, FusedSwiGLU} <= kinds
    ids = _ids(cfg.vocab_size, 3, 20, seed=2)
    with torch.inference_mode():
        want = model(ids)
        result = compare("logits", fused(ids).numpy(), want.numpy())
        cache = KVCache(cfg.num_layers, cfg.kv_width, 20, batch=3)
        stepped = torch.cat([fused(ids[:, :12], cache)] + [fused(ids[:, t : t + 1], cache) for t in range(12, 20)], -1)
    assert result.within(FP32), result
    assert compare("cached", stepped.numpy(), want.numpy()).within(FP32)


def test_fp16_within_stated_bounds(case):
    cfg, weights, _, want = case
    half = LlamaModel.from_canonical(cfg, weights).half()
    with torch.inference_mode():
        got = _bsv(half(_ids(cfg.vocab_size, 2, LONG)[:, :64]))
    result = compare("logits", got, want[:, :64].numpy())
    assert result.within(FP16), result


def test_positions_beyond_the_context_are_refused(case, model):
    cfg, _, _, _ = case
    cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=cfg.max_positions + 8)
    cache.advance(cfg.max_positions - 2)
    with pytest.raises(InputError, match="positions"):
        model(_ids(cfg.vocab_size, 1, 3), cache)


def test_layers_are_1x1_convs_on_b_c_1_s(case, model):
    cfg, _, _, _ = case
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    shapes = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | RMSNormANE)
    ]
    with torch.inference_mode():
        model(_ids(cfg.vocab_size, 2, 9))
    for hook in hooks:
        hook.remove()
    assert shapes and all(len(s) == 4 and s[0] == 2 and s[2] == 1 and s[3] == 9 for s in shapes), shapes


# The shared building blocks on their own.


def test_rms_norm_equals_torch_and_survives_fp16_activations_in_the_thousands():
    gen = torch.Generator().manual_seed(0)
    for magnitude in (1e-2, 1.0, 300.0):
        x = torch.randn(2, 5, 96, generator=gen, dtype=torch.float64) * magnitude
        weight = torch.randn(96, generator=gen, dtype=torch.float64)
        norm = RMSNormANE(96, eps=1e-6).double()
        norm.weight.data = weight.view(1, -1, 1, 1)
        ours = norm(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
        torch.testing.assert_close(ours, F.rms_norm(x, (96,), weight, eps=1e-6), rtol=1e-9, atol=1e-9)
    x = torch.randn(1, 768, 1, 16)
    x[:, 100] = 3000.0
    assert torch.isinf((x.half() * x.half()).sum(dim=1)).any(), "the naive fp16 sum of squares must overflow"
    want = F.rms_norm(x.squeeze(2).transpose(1, 2), (768,), eps=1e-6).transpose(1, 2).unsqueeze(2)
    got = RMSNormANE(768, eps=1e-6).half()(x.half()).float()
    assert torch.isfinite(got).all() and (got - want).abs().max() < 2e-2 * want.abs().max()


def test_grouped_query_split_einsum_equals_sdpa_without_repeating_keys():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6 * 8, 1, 11, generator=gen)
    k, v = (torch.randn(2, 2 * 8, 1, 11, generator=gen) for _ in range(2))
    mask = torch.zeros(1, 11, 1, 11).masked_fill(torch.ones(11, 11).triu(1).bool().T[None, :, None, :], -1e4)
    ours = split_einsum_attention(q, k, v, num_heads=6, mask=mask, num_kv_heads=2)

    def heads(t, n):  # (B, n*d, 1, S) -> (B, n, S, d)
        return t.squeeze(2).view(2, n, 8, 11).transpose(2, 3)

    want = F.scaled_dot_product_attention(
        heads(q, 6), heads(k, 2), heads(v, 2), is_causal=True, scale=1.0, enable_gqa=True
    )
    torch.testing.assert_close(heads(ours, 6), want, rtol=1e-5, atol=1e-6)


def test_rope_tables_index_by_a_runtime_offset_and_rotate_halves():
    rotary = RotaryEmbedding([1.0, 0.1, 0.01], max_positions=32)
    by_int = rotary(4, 7, heads=2)
    by_tensor = rotary(4, torch.tensor([7], dtype=torch.int32), heads=2)
    assert all(torch.equal(a, b) for a, b in zip(by_int, by_tensor, strict=True))
    assert by_int[0].shape == (1, 12, 1, 4)
    x = torch.randn(1, 12, 1, 4)
    got = apply_rotary(x, *by_int, head_dim=6)
    # transformers' formula per head: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
    angles = torch.arange(7, 11, dtype=torch.float32)[:, None] * torch.tensor([1.0, 0.1, 0.01])[None, :]
    cos, sin = (torch.cat([f(angles), f(angles)], dim=1) for f in (torch.cos, torch.sin))  # (S, 6)
    per_head = x[0, :, 0, :].T.reshape(4, 2, 6)  # (S, head, 6)
    rotated = torch.cat([-per_head[..., 3:], per_head[..., :3]], dim=-1)
    want = per_head * cos[:, None] + rotated * sin[:, None]
    torch.testing.assert_close(got[0, :, 0, :].T.reshape(4, 2, 6), want)


def test_qwen_vocabulary_head_is_ten_chunks_below_the_ane_limit():
    sizes = [c.out_channels for c in ChunkedHead(8, 151936, bias=False).chunks]
    assert len(sizes) == 10 and max(sizes) <= 16384 and sum(sizes) == 151936


def test_missing_untied_head_is_refused():
    from canonical.errors import CheckpointError

    cfg = LlamaConfig(
        vocab_size=11,
        max_positions=8,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        intermediate_size=12,
    )
    weights = {k: v for k, v in LlamaModel(cfg).state_dict().items() if not k.startswith("lm_head.")}
    with pytest.raises(CheckpointError, match="lm_head"):
        LlamaModel.from_canonical(cfg, weights)
