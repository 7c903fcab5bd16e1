"""The contract on the MLX backend, for every registered family with an MLX model: our MLX model (through the
backend's KV cache) against the transformers CPU reference, on the checkpoints of tests/families.py (MLX). fp32
within parity.TOLERANCES["fp32"], 32 greedy tokens exact, prefill then decode equal to one forward, a rewind past a
buffer growth bit-identical, overflow and positions past the context refused; reduced formats (fp16, bf16, 8- and
4-bit weights) within the bounds measured for the family's cases (tests/families.py: MLX_REDUCED_BOUNDS; a family
without measured bounds is held to parity.TOLERANCES), and a quantized model equal to fp32 on its dequantized
weights. Models stay small: MLX's CPU matmul is ~25x slower than torch's here."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from canonical.errors import InputError
from convert.checkpoint import load_checkpoint
from convert.registry import build_mlx_model
from ondevice.backends.mlx import MLXCausalLM, load
from ondevice.parity import TOLERANCES, compare, greedy_agreement
from ondevice.reference import load_reference
from ondevice.runtime import greedy_tokens
from tests.encoders import compare_encoders, encoder_inputs
from tests.families import MLX, MLX_REDUCED_BOUNDS, REDUCED_FORMATS, cases, ids, make

FP32 = TOLERANCES["fp32"]
GROUP = 32  # quantization group: the cases' widths are multiples of it where every layer should be quantized
CAUSAL, ENCODERS = cases(MLX, causal=True, needs="mlx_model"), cases(MLX, causal=False, needs="mlx_model")


class Causal:
    def __init__(self, directory):
        self.ckpt = load_checkpoint(directory)
        self.cfg = self.ckpt.config
        self.reference = load_reference(self.ckpt)
        self.long = min(150, self.cfg.max_positions - 10)

    def ids(self, length: int, seed: int = 0) -> list[int]:
        return np.random.default_rng(seed).integers(0, self.cfg.vocab_size, size=length).tolist()

    def reference_logits(self, ids) -> np.ndarray:
        self.reference.trim(0)
        return self.reference.prefill(ids)


@pytest.fixture(scope="module", params=CAUSAL, ids=ids(CAUSAL))
def causal(request, family_root) -> Causal:
    return Causal(make(request.param, family_root))


@pytest.mark.parametrize("length", ["1", "7", "long"])
def test_fp32_logits_match_transformers(causal, length):
    ids = causal.ids(causal.long if length == "long" else int(length))
    c = compare("logits", load(causal.ckpt).prefill(ids), causal.reference_logits(ids))
    assert c.within(FP32), c


def test_32_greedy_tokens_match_transformers(causal):
    prompt = causal.ids(9, seed=4)
    ours = greedy_tokens(load(causal.ckpt), prompt, 32)
    assert ours == greedy_tokens(causal.reference, prompt, 32)
    assert len(set(ours)) > 3  # a real continuation, not one token repeated


def test_prefill_then_decode_equals_one_forward(causal):
    lm, ids = load(causal.ckpt), causal.ids(60, seed=3)
    full = lm.prefill(ids)
    lm.trim(0)
    stepwise = [lm.prefill(ids[:10])] + [lm.decode(t)[None] for t in ids[10:37]] + [lm.prefill(ids[37:])]
    assert lm.length == len(ids)
    c = compare("logits", np.concatenate(stepwise), full)
    assert c.within(FP32), c


def test_a_rewind_past_a_buffer_growth_is_bit_identical_to_a_fresh_run(causal, monkeypatch):
    import mlx_model.cache

    monkeypatch.setattr(mlx_model.cache, "STEP", 8)  # the buffers grow (and copy) several times
    ids = causal.ids(30, seed=5)
    lm = load(causal.ckpt)
    lm.prefill(ids[:6])
    for t in ids[6:20]:
        lm.decode(t)
    lm.trim(11)  # back past a buffer growth
    after_trim = [lm.decode(t) for t in [7, 8, 9, *ids[20:30]]]
    fresh = load(causal.ckpt)
    fresh.prefill(ids[:11])
    expected = [fresh.decode(t) for t in [7, 8, 9, *ids[20:30]]]
    np.testing.assert_array_equal(np.stack(after_trim), np.stack(expected))


def test_overflow_and_positions_beyond_the_context_are_refused(causal):
    lm = load(causal.ckpt, capacity=8)
    lm.prefill(causal.ids(6))
    with pytest.raises(InputError, match="capacity of 8"):
        lm.prefill(causal.ids(3))
    assert lm.length == 6  # the refused prefill wrote nothing
    with pytest.raises(InputError, match="cannot trim"):
        lm.trim(7)
    positions = causal.cfg.max_positions
    model = build_mlx_model(causal.cfg, causal.ckpt.weights)
    with pytest.raises(InputError, match=f"exceed the model's {positions} positions"):
        model(mx.array([causal.ids(positions + 1)]))
    roomy = MLXCausalLM(causal.cfg, model, capacity=positions)  # the model refuses, not only the cache
    roomy.prefill(causal.ids(positions - 10))
    with pytest.raises(InputError, match=f"{positions + 1} tokens exceed"):
        roomy.prefill(causal.ids(11))
    assert roomy.length == positions - 10


def _bounds(family: str, dtype: str, bits: int | None) -> tuple[float, float, float]:
    """(rel_max_abs <=, cosine >=, teacher-forced top-1 >=) for a reduced format."""
    if family in MLX_REDUCED_BOUNDS:
        return MLX_REDUCED_BOUNDS[family][(dtype, bits)]
    tolerance = TOLERANCES[{8: "q8", 4: "q4"}.get(bits, dtype)]
    return tolerance.rel_max_abs, tolerance.cosine, 0.0


@pytest.mark.parametrize(("dtype", "bits"), REDUCED_FORMATS, ids=[f"{d}-q{b}" if b else d for d, b in REDUCED_FORMATS])
def test_reduced_precision_within_measured_bounds(causal, dtype, bits):
    """Quantized weights run with fp32 activations: MLX's CPU backend runs fp16 quantized matmuls ~30x slower (fp16
    activations with q8/q4 weights measured the same within 20%)."""
    family = causal.cfg.family
    ids = causal.ids(causal.long)
    want = causal.reference_logits(ids)
    lm = load(causal.ckpt, dtype=dtype, quantize=bits, group_size=GROUP)
    got = lm.prefill(ids)
    c, top1 = compare("logits", got, want), float(np.mean(got.argmax(-1) == want.argmax(-1)))
    rel, cos, agree = _bounds(family, dtype, bits)
    assert c.rel_max_abs <= rel and c.cosine >= cos and top1 >= agree, (c, top1)
    if bits is None:  # fp16, bf16: greedy along the reference's path departs only where their own error can explain
        agreement = greedy_agreement(
            load(causal.ckpt, dtype=dtype), causal.reference, ids[:9], 32, tie_margin=2 * c.max_abs
        )
        assert agreement.clear_misses == 0, agreement


def test_quantized_kernel_equals_dequantized_weights(causal):
    """The 4-bit model computes what fp32 computes on its dequantized weights: its loss is the rounding of the
    weights, not our code."""
    quantized = load(causal.ckpt, quantize=4, group_size=GROUP)
    params = dict(tree_flatten(quantized.model.parameters()))
    plain = {}
    for name, array in params.items():
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.weight" in params:
            continue
        if name.endswith(".weight") and f"{base}.scales" in params:
            array = mx.dequantize(array, params[f"{base}.scales"], params[f"{base}.biases"], group_size=GROUP, bits=4)
        plain[name] = array
    assert any(n.endswith(".scales") for n in params)
    ids = causal.ids(40)
    model = type(quantized.model)(causal.cfg)  # the dequantized weights as its parameters, whatever they stand for
    model.load_weights(list(plain.items()), strict=True)
    dequantized = MLXCausalLM(causal.cfg, model)
    c = compare("logits", quantized.prefill(ids), dequantized.prefill(ids))
    assert c.within(FP32), c


def test_every_layer_whose_width_splits_into_groups_is_quantized_and_errors_grow_with_fewer_bits(causal):
    params = dict(tree_flatten(load(causal.ckpt).model.parameters()))
    quantized = dict(tree_flatten(load(causal.ckpt, quantize=4, group_size=GROUP).model.parameters()))
    for name, array in params.items():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and array.ndim == 2 and "norm" not in name:
            # MLX quantizes along the input axis in whole groups: a width of 200 cannot take groups of 32
            assert (f"{layer}.scales" in quantized) == (array.shape[-1] % GROUP == 0), layer
    ids = causal.ids(32)
    exact = load(causal.ckpt).prefill(ids)
    errors = [np.abs(load(causal.ckpt, quantize=b, group_size=GROUP).prefill(ids) - exact).max() for b in (8, 4)]
    assert 0 < errors[0] < errors[1]


# --- encoders ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 7, 128])
@pytest.mark.parametrize("case", ENCODERS, ids=ids(ENCODERS))
def test_encoder_fp32(case, seq, family_root):
    ckpt = load_checkpoint(make(case, family_root))
    ids_, mask, types = encoder_inputs(ckpt.config, batch=2, seq=seq)
    compare_encoders(load(ckpt), load_reference(ckpt), ids_, mask, types, FP32)
