"""The contract on the torch-ane backend, for every registered family: the ANE-layout model (plain, as Core ML
converts it, and through the fused CPU kernels the backend runs) against the transformers CPU reference, on the
checkpoints of tests/families.py (TORCH_ANE: the shapes that break each family's naive implementations).

Bounds from `ondevice.parity.TOLERANCES`: fp32 max-abs error <= 1e-4 of the reference's scale and cosine >=
0.99999; fp16 <= 2e-2 and 0.999. Causal LMs also: prefill then decode equals one forward, the export-time static
cache equals the runtime cache, 32 greedy tokens exact, a rewind is bit-identical, positions past the context are
refused; encoders every output the checkpoint has, real tokens only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ane_model.cpu_fused import FusedAttention, FusedConv1x1, fuse_for_cpu
from ane_model.kv_cache import KVCache
from ane_model.layers import LayerNormANE, RMSNormANE
from ane_model.static_cache import StaticKVCache
from canonical.errors import InputError
from convert.checkpoint import load_checkpoint
from convert.registry import build_ane_model
from ondevice.backends.torch_ane import TorchCausalLM, TorchEncoder
from ondevice.parity import TOLERANCES, compare, greedy_agreement
from ondevice.reference import ReferenceCausalLM, ReferenceEncoder
from ondevice.runtime import greedy_tokens
from tests.encoders import compare_encoders, encoder_inputs
from tests.families import TORCH_ANE, cases, ids, make

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]
CAUSAL, ENCODERS = cases(TORCH_ANE, causal=True, needs="ane_model"), cases(TORCH_ANE, causal=False, needs="ane_model")


def _ids(vocab: int, length: int, seed: int = 0, batch: int | None = None):
    shape = length if batch is None else (batch, length)
    return np.random.default_rng(seed).integers(0, vocab, size=shape).tolist()


class Causal:
    """One case: its checkpoint, the transformers model, the plain ANE-layout model and a long-context length."""

    def __init__(self, directory):
        from transformers import AutoModelForCausalLM

        self.ckpt = load_checkpoint(directory)
        self.cfg = self.ckpt.config
        self.reference = ReferenceCausalLM(self.ckpt)
        self.transformers = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.model = build_ane_model(self.cfg, self.ckpt.weights)
        self.long = min(150, self.cfg.max_positions - 10)  # RoPE at positions near the end of the context

    def backend(self, **kwargs) -> TorchCausalLM:
        return TorchCausalLM(self.cfg, self.ckpt.weights, **kwargs)

    def ids(self, length: int, seed: int = 0, batch: int | None = None):
        return _ids(self.cfg.vocab_size, length, seed, batch)


@pytest.fixture(scope="module", params=CAUSAL, ids=ids(CAUSAL))
def causal(request, family_root) -> Causal:
    return Causal(make(request.param, family_root))


def _bsv(logits: torch.Tensor) -> np.ndarray:
    """(B, V, 1, S) -> (B, S, V), as transformers lays logits out."""
    return logits[:, :, 0, :].transpose(1, 2).float().numpy()


@pytest.mark.parametrize("length", ["1", "7", "long"])
def test_backend_logits_match_transformers_fp32(causal, length):
    ids = causal.ids(causal.long if length == "long" else int(length))
    causal.reference.trim(0)
    result = compare("logits", causal.backend().prefill(ids), causal.reference.prefill(ids))
    assert result.within(FP32), result


def test_plain_model_batch_and_context_end_match_transformers_fp32(causal):
    """The model as Core ML converts it, a batch of 2; the end of the context alone (RoPE tables at the largest
    positions: a llama3 frequency off by one float32 ulp already costs ~2e-5 there)."""
    ids = torch.tensor(causal.ids(causal.long, batch=2))
    with torch.inference_mode():
        got, want = _bsv(causal.model(ids)), causal.transformers(ids).logits.numpy()
    assert compare("logits", got, want).within(FP32)
    tail = compare("tail", got[:, -10:], want[:, -10:])
    assert tail.within(FP32), tail


def test_prefill_then_decode_equals_one_full_forward(causal):
    ids = torch.tensor(causal.ids(40, seed=5, batch=2))
    with torch.inference_mode():
        full = causal.model(ids)
        cache = KVCache(causal.cfg.num_layers, causal.cfg.kv_width, capacity=64, batch=2)
        pieces = [causal.model(ids[:, :25], cache)] + [causal.model(ids[:, t : t + 1], cache) for t in range(25, 40)]
    assert cache.length == 40
    stepwise = torch.cat(pieces, dim=-1)
    # Same weights, same fp32 math, different summation order only: 1e-5 of scale is tight.
    assert (stepwise - full).abs().max() <= 1e-5 * full.abs().max()


def test_static_export_cache_equals_the_runtime_cache(causal):
    """The export path: a runtime (1,) position tensor writes the cache as a blend, indexes the position tables and
    the mask, every shape static."""
    cfg, capacity = causal.cfg, 16
    ids = torch.tensor([causal.ids(12, seed=6)])
    shape = (cfg.num_layers, cfg.kv_width, 1, capacity)
    with torch.inference_mode():
        want = causal.model(ids)
        static = StaticKVCache(torch.zeros(shape), torch.zeros(shape), torch.tensor([0], dtype=torch.int32))
        first = causal.model(ids[:, :9], static)
        keys, values = static.new_keys, static.new_values
        steps = []
        for t in range(9, 12):
            static = StaticKVCache(keys, values, torch.tensor([t], dtype=torch.int32))
            steps.append(causal.model(ids[:, t : t + 1], static))
            keys, values = static.new_keys, static.new_values
    assert compare("static", torch.cat([first, *steps], dim=-1).numpy(), want.numpy()).within(FP32)


def test_32_greedy_tokens_match_transformers_exactly(causal):
    """Our decode loop (the fused backend: prefill, then one token at a time through the KV cache) against
    transformers' own."""
    prompt = causal.ids(12, seed=9)
    ours = greedy_tokens(causal.backend(), prompt, 32)
    theirs = greedy_tokens(causal.reference, prompt, 32)
    assert ours == theirs
    assert len(set(theirs)) >= 4, "a degenerate continuation would make this test vacuous"


def test_a_rewind_is_bit_identical_to_a_fresh_run(causal, monkeypatch):
    import ane_model.kv_cache

    monkeypatch.setattr(ane_model.kv_cache, "STEP", 8)  # the cache's buffers grow (and copy) several times
    ids = causal.ids(20, seed=4)
    fresh = causal.backend(capacity=64)
    fresh.prefill(ids[:12])
    expected = fresh.prefill(ids[12:])
    lm = causal.backend(capacity=64)
    lm.prefill(ids[:12])
    lm.prefill(causal.ids(5, seed=77))  # decode a different continuation ...
    lm.trim(12)  # ... rewind it, and continue as the fresh run did: the same computation, bit for bit
    np.testing.assert_array_equal(lm.prefill(ids[12:]), expected)


def test_fp16_within_stated_bounds(causal):
    ids = causal.ids(64, seed=3)
    causal.reference.trim(0)
    result = compare("logits", causal.backend(dtype="fp16").prefill(ids), causal.reference.prefill(ids))
    assert result.within(FP16), result
    # Greedy along the reference's path: a step may differ only where the reference's top two logits are closer
    # than fp16's own error can tell apart (twice the max-abs error just measured on 64 tokens of this model);
    # everywhere else fp16 must pick the reference's token. Measured: all 32 on nine of the thirteen cases, 31 on
    # four, each departure at a margin of 0.0005-0.009 logits where fp16's error was 0.02-0.07.
    agreement = greedy_agreement(
        causal.backend(dtype="fp16"), causal.reference, causal.ids(12, seed=9), 32, tie_margin=2 * result.max_abs
    )
    assert agreement.clear_misses == 0 and agreement.ties <= 1, agreement


def test_cpu_fused_equals_the_ane_layout_it_runs(causal):
    """The backend's fused kernels (ane_model/cpu_fused.py): the same function to fp32 rounding, for a batch of 3
    and through the KV cache."""
    fused = fuse_for_cpu(build_ane_model(causal.cfg, causal.ckpt.weights))
    assert {FusedAttention, FusedConv1x1} <= {type(m) for m in fused.modules()}
    assert not {LayerNormANE, RMSNormANE} & {type(m) for m in fused.modules()}  # every norm fused
    ids = torch.tensor(causal.ids(20, seed=2, batch=3))
    with torch.inference_mode():
        want = causal.model(ids)
        result = compare("logits", fused(ids).numpy(), want.numpy())
        cache = KVCache(causal.cfg.num_layers, causal.cfg.kv_width, 20, batch=3)
        stepped = torch.cat([fused(ids[:, :12], cache)] + [fused(ids[:, t : t + 1], cache) for t in range(12, 20)], -1)
    assert result.within(FP32), result
    assert compare("cached", stepped.numpy(), want.numpy()).within(FP32)


def test_the_cache_holds_only_the_key_value_heads(causal):
    cfg = causal.cfg
    cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=16)
    with torch.inference_mode():
        causal.model(torch.tensor([causal.ids(5)]), cache)
    assert cache.keys[0].shape == cache.values[0].shape == (1, cfg.num_kv_heads * cfg.head_dim, 1, 16)


def test_positions_beyond_the_context_are_refused(causal):
    cfg = causal.cfg
    with pytest.raises(InputError, match=f"exceed the model's {cfg.max_positions} positions"):
        causal.model(torch.tensor([causal.ids(cfg.max_positions + 1)]))
    cache = KVCache(cfg.num_layers, cfg.kv_width, capacity=cfg.max_positions + 8)
    cache.advance(cfg.max_positions - 2)
    with pytest.raises(InputError, match="positions"):
        causal.model(torch.tensor([causal.ids(3)]), cache)


def _activation_shapes(model: nn.Module, *inputs) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d | LayerNormANE | RMSNormANE)]  # fmt: skip
    with torch.inference_mode():
        model(*inputs)
    for hook in hooks:
        hook.remove()
    return shapes


def test_layers_are_1x1_convs_on_b_c_1_s(causal):
    """Rules 1 and 2: no nn.Linear, every projection a 1x1 conv, every activation (B, C, 1, S)."""
    model = causal.model
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    shapes = _activation_shapes(model, torch.tensor(causal.ids(9, batch=2)))
    assert shapes and all(len(s) == 4 and s[0] == 2 and s[2] == 1 and s[3] == 9 for s in shapes), shapes


# --- encoders ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=ENCODERS, ids=ids(ENCODERS))
def encoder(request, family_root):
    ckpt = load_checkpoint(make(request.param, family_root))
    return ckpt, ReferenceEncoder(ckpt)


@pytest.mark.parametrize("seq_len", [1, 7, 128])
def test_encoder_outputs_match_transformers_fp32(encoder, seq_len):
    ckpt, reference = encoder
    ids, mask, types = encoder_inputs(ckpt.config, batch=3, seq=seq_len)
    results = compare_encoders(TorchEncoder(ckpt.config, ckpt.weights), reference, ids, mask, types, FP32)
    names = {r.name for r in results}
    assert "hidden" in names
    assert ("mlm_logits" in names) == ckpt.config.has_mlm_head
    assert ("pooled" in names) == ckpt.config.has_pooler


def test_cpu_fused_encoder_equals_the_ane_layout_it_runs(encoder):
    ckpt, _ = encoder
    plain = build_ane_model(ckpt.config, ckpt.weights)
    fused = fuse_for_cpu(build_ane_model(ckpt.config, ckpt.weights))
    assert {FusedAttention, FusedConv1x1} <= {type(m) for m in fused.modules()}
    ids, mask, types = encoder_inputs(ckpt.config, batch=3, seq=16, seed=2)
    args = [torch.as_tensor(ids), torch.as_tensor(mask), None if types is None else torch.as_tensor(types)]
    with torch.inference_mode():
        got, want = fused(*args), plain(*args)
    valid = torch.as_tensor(mask, dtype=torch.bool)
    for name in ("hidden", "mlm_logits"):
        if getattr(want, name) is not None:
            a, b = (getattr(out, name)[:, :, 0, :].transpose(1, 2)[valid] for out in (got, want))
            assert compare(name, a.numpy(), b.numpy()).within(FP32), name
    for name in ("pooled", "sentence_embedding"):
        if getattr(want, name) is not None:
            assert compare(name, getattr(got, name).numpy(), getattr(want, name).numpy()).within(FP32), name


def test_encoder_fp16_within_stated_bounds(encoder):
    ckpt, reference = encoder
    ids, mask, types = encoder_inputs(ckpt.config, batch=2, seq=64, seed=1)
    compare_encoders(TorchEncoder(ckpt.config, ckpt.weights, dtype="fp16"), reference, ids, mask, types, FP16)


def test_encoder_layers_are_b_c_1_s(encoder):
    ckpt, _ = encoder
    model = build_ane_model(ckpt.config, ckpt.weights)
    assert not any(isinstance(m, nn.Linear) for m in model.layers.modules())
    shapes = _activation_shapes(model, torch.zeros(3, 5, dtype=torch.long))
    assert shapes and all(len(s) == 4 and s[2] == 1 and s[3] == 5 for s in shapes), shapes
