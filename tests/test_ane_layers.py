"""The ANE-layout building blocks of `ane_model/layers.py` on their own, against torch's own operations: channel
layer and RMS norms (fp16 activations in the thousands included), split-einsum attention with and without grouped
key/value heads, causal masks at an offset, RoPE tables looked up by a runtime position, the chunked vocabulary
head (rule 7), and the refusal of an untied model without its head. Whole models, family by family, are in
tests/test_parity_torch_ane.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ane_model.layers import (
    ChunkedHead,
    LayerNormANE,
    RMSNormANE,
    RotaryEmbedding,
    apply_rotary,
    causal_mask,
    split_einsum_attention,
)
from ane_model.llama import LlamaModel
from canonical.errors import CheckpointError
from canonical.llama import LlamaConfig
from convert.checkpoint import load_checkpoint
from convert.registry import build_ane_model as build_model


@settings(max_examples=40, deadline=None)
@given(channels=st.integers(1, 96), seq=st.integers(1, 9), magnitude=st.floats(1e-3, 1e3), seed=st.integers(0, 99))
def test_channel_layer_norm_equals_torch_layer_norm(channels, seq, magnitude, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, seq, channels, generator=gen, dtype=torch.float64) * magnitude
    weight, bias = (
        torch.randn(channels, generator=gen, dtype=torch.float64),
        torch.randn(channels, generator=gen, dtype=torch.float64),
    )
    norm = LayerNormANE(channels, eps=1e-5).double()
    norm.weight.data, norm.bias.data = weight.view(1, -1, 1, 1), bias.view(1, -1, 1, 1)
    ours = norm(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
    torch.testing.assert_close(ours, F.layer_norm(x, (channels,), weight, bias, eps=1e-5), rtol=1e-9, atol=1e-9)


def test_layer_norm_survives_fp16_activations_in_the_thousands():
    # Real GPT-2 residual streams reach thousands in a few channels; x*x overflows fp16 (max 65504).
    x = torch.randn(1, 768, 1, 16)
    x[:, 100] = 3000.0
    naive_variance = (x.half() - x.half().mean(dim=1, keepdim=True)).pow(2).mean(dim=1)
    assert torch.isinf(naive_variance).any(), "the naive fp16 variance must overflow, or this test proves nothing"
    norm = LayerNormANE(768, eps=1e-5)
    want = F.layer_norm(x.squeeze(2).transpose(1, 2), (768,), eps=1e-5).transpose(1, 2).unsqueeze(2)
    got = norm.half()(x.half()).float()
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 2e-2 * want.abs().max()


def test_split_einsum_attention_equals_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5 * 8, 1, 11, generator=gen) for _ in range(3))
    mask = causal_mask(11, 11, 0, torch.float32)
    ours = split_einsum_attention(q, k, v, num_heads=5, mask=mask)

    def heads(t):  # (B, C, 1, S) -> (B, H, S, d)
        return t.squeeze(2).view(2, 5, 8, 11).transpose(2, 3)

    want = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True, scale=1.0)
    torch.testing.assert_close(ours.squeeze(2).view(2, 5, 8, 11).transpose(2, 3), want, rtol=1e-5, atol=1e-6)


def test_causal_mask_with_offset_blocks_exactly_the_future():
    mask = causal_mask(query_len=3, key_len=7, offset=4, dtype=torch.float32)  # queries at positions 4, 5, 6
    assert mask.shape == (1, 7, 1, 3)
    allowed = (mask[0, :, 0, :] == 0).T  # (query, key)
    expected = torch.tensor([[k <= q for k in range(7)] for q in (4, 5, 6)])
    assert torch.equal(allowed, expected)


def test_vocabulary_head_is_chunked_below_the_ane_limit(tmp_path):
    from tests.checkpoints import make_gpt2

    ckpt = load_checkpoint(make_gpt2(tmp_path / "wide", n_layer=1, n_embd=32, n_head=2, vocab_size=40000))
    model = build_model(ckpt.config, ckpt.weights)
    sizes = [c.out_channels for c in model.lm_head.chunks]
    assert sizes == [16384, 16384, 7232]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(ids)
        direct = torch.einsum("bcs,vc->bvs", model.hidden_states(ids).squeeze(2), ckpt.weights["lm_head.weight"])
    torch.testing.assert_close(logits.squeeze(2), direct, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("norm", [LayerNormANE(64, eps=1e-5), RMSNormANE(64, eps=1e-6)], ids=["layer", "rms"])
def test_norms_of_small_activations_convert_to_core_ml_exactly(norm, tmp_path):
    """Activations of max-abs 1e-3 .. 1 (Gemma's post-norms see 5e-3) through a converted norm, in the evaluator,
    against the torch module: MIL's `inverse` adds 1e-4 to what it inverts, so the eps term must not be one."""
    import coremltools as ct
    import numpy as np

    from coreml_runtime.mil_eval import MilProgram

    gen = torch.Generator().manual_seed(0)
    norm.weight.data = torch.randn(norm.weight.shape, generator=gen)
    x = torch.randn(1, 64, 1, 4, generator=gen) * torch.tensor([1e-3, 1e-2, 1e-1, 1.0])
    exported = torch.export.export(norm.eval(), (x,)).run_decompositions({})
    ops = {node.target for node in exported.graph.nodes}
    assert torch.ops.aten.reciprocal.default not in ops
    model = ct.convert(exported, inputs=[ct.TensorType("x", shape=x.shape)], outputs=[ct.TensorType("y")],
                       convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                       minimum_deployment_target=ct.target.iOS18)  # fmt: skip
    model.save(str(tmp_path / "norm.mlpackage"))
    ours = MilProgram(tmp_path / "norm.mlpackage").predict({"x": x.numpy()})["y"]
    np.testing.assert_allclose(ours, norm(x).detach().numpy(), rtol=1e-5, atol=1e-6)


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


def test_models_are_built_without_random_init_and_every_parameter_is_then_loaded():
    """from_canonical builds its modules without their random init (a waste: every parameter is overwritten), and
    that holds only because loading refuses canonical weights that miss a parameter; torch's init functions are
    back once the model is built, an exception inside included."""
    from torch import nn

    from ane_model.layers import load_canonical, without_random_init

    original = nn.init.kaiming_uniform_
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn.init, "kaiming_uniform_", lambda tensor, *a, **k: calls.append(tensor) or tensor)
        with without_random_init():
            layer = nn.Conv2d(4, 4, 1)
        assert calls == []
        nn.Conv2d(4, 4, 1)
        assert len(calls) == 1  # outside the context, init runs again
    assert nn.init.kaiming_uniform_ is original
    with pytest.raises(RuntimeError), without_random_init():
        raise RuntimeError
    assert nn.init.kaiming_uniform_ is original
    with pytest.raises(CheckpointError, match="missing"):
        load_canonical(layer, {"weight": torch.zeros(4, 4)})
