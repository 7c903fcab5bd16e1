"""The ANE rules hold in the torch models themselves: layout, projections, norm, masks, fp16 range."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ane_model.layers import LayerNormANE, causal_mask, split_einsum_attention
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


def _activation_shapes(model: nn.Module, *inputs) -> dict[str, tuple[int, ...]]:
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | LayerNormANE)
    ]
    with torch.no_grad():
        model(*inputs)
    for hook in hooks:
        hook.remove()
    return shapes


def test_gpt2_is_all_1x1_convs_on_b_c_1_s(gpt2_dir):
    ckpt = load_checkpoint(gpt2_dir)
    model = build_model(ckpt.config, ckpt.weights)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    shapes = _activation_shapes(model, torch.zeros(2, 9, dtype=torch.long))
    assert shapes and all(len(s) == 4 and s[0] == 2 and s[2] == 1 and s[3] == 9 for s in shapes.values()), shapes


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


def test_bert_encoder_layers_are_b_c_1_s(bert_dir):
    ckpt = load_checkpoint(bert_dir)
    model = build_model(ckpt.config, ckpt.weights)
    shapes = _activation_shapes(model, torch.zeros(3, 5, dtype=torch.long))
    assert all(len(s) == 4 and s[2] == 1 and s[3] == 5 for s in shapes.values()), shapes
