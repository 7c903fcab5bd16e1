"""Run an ANE-layout model on the CPU through fused torch kernels: same weights, same layout, same math.

The ANE layout spells every operation out so that Core ML maps each to a Neural Engine op: a layer
norm is fifteen elementwise kernels, attention is four per head, a projection is a 1x1 conv. Run
eagerly on a CPU, a single-token decode of a small model is then ~270 kernel launches of a few
microseconds each, and the launches, not the arithmetic, set the latency a keyboard sees. Here the
same modules run through one kernel each where torch has one: `F.layer_norm` over the channel axis,
`F.scaled_dot_product_attention` over all heads at once, and a 1x1 conv as one `addmm` with the batch
folded into the positions (torch sends a 1x1 conv on one thread to its im2col path, ~5x slower than
the matmul for a batch of a few positions).

`fuse_for_cpu` swaps the class of each module in place: parameters, buffers and the (B, C, 1, S)
tensors between modules are untouched, so the fused model's outputs equal the unfused one's to
rounding (tests/test_ane_parity.py checks both against transformers). Export and conversion build
their own, unfused model: `convert/` never sees these classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ane_model.layers import Attention, LayerNormANE


class FusedConv1x1(nn.Conv2d):
    """A 1x1 conv as one addmm over positions: (B*S, C) @ (C, C'). Its weight is stored transposed
    (fuse_for_cpu re-strides it in place), the layout BLAS reads fastest when there are few positions
    (measured: 8192x256 weight, 8 positions, 0.44 ms against 0.66 ms for the weight-major product).
    Outputs are positions-major in memory under their (B, C', 1, S) shape, so that the next conv and
    layer norm read them without a copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S) -> (B, C', 1, S)
        batch, channels, _, seq = x.shape
        rows = x.permute(0, 3, 1, 2).reshape(batch * seq, channels)  # a view when x is positions-major
        weight_t = self.weight[:, :, 0, 0].t()  # (C, C'), rows contiguous
        y = rows @ weight_t if self.bias is None else torch.addmm(self.bias, rows, weight_t)
        return y.view(batch, seq, -1, 1).permute(0, 2, 3, 1)


class FusedLayerNorm(LayerNormANE):
    """No fp16 overflow guard needed: torch's CPU layer norm accumulates in fp32 whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        y = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), self.weight.view(channels), self.bias.view(channels),
                         self.eps)
        return y.permute(0, 3, 1, 2)


class FusedAttention(Attention):
    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        q = self.q(x) * self.scale
        k, v = self.k(x), self.v(x)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        batch, channels, _, query_len = q.shape
        heads = self.num_heads

        def per_head(t: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S) -> (B, H, S, d)
            return t.reshape(t.shape[0], heads, channels // heads, t.shape[-1]).transpose(2, 3)

        # The additive mask (B | 1, Sk, 1, Sq) as SDPA's (B | 1, 1, Sq, Sk); q is already scaled.
        out = F.scaled_dot_product_attention(per_head(q), per_head(k), per_head(v),
                                             attn_mask=mask.permute(0, 2, 3, 1), scale=1.0)
        merged = out.transpose(1, 2).reshape(batch, query_len, channels)  # (B, Sq, C): positions-major
        return self.o(merged.transpose(1, 2).unsqueeze(2))


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1


_FUSED = {LayerNormANE: FusedLayerNorm, Attention: FusedAttention}


def fuse_for_cpu(model: nn.Module) -> nn.Module:
    """Switch `model`'s modules, in place, to their fused CPU forms; returns `model`."""
    for module in model.modules():
        if type(module) in _FUSED:
            module.__class__ = _FUSED[type(module)]
        elif type(module) is nn.Conv2d and _is_pointwise(module):
            module.__class__ = FusedConv1x1
            transposed = module.weight.data[:, :, 0, 0].t().contiguous()  # (C, C') in memory
            module.weight.data = transposed.t()[:, :, None, None]  # the same values, shape (C', C, 1, 1)
    for module in model.modules():
        if isinstance(module, FusedAttention):
            _pack_qkv(module)
    return model


def _pack_qkv(attention: FusedAttention) -> None:
    """Store q, k and v's (C, C) matrices side by side in one (C, 3C) buffer, `attention.qkv_weight`, each
    conv's weight becoming a view of its third: a caller can project all three with one product (the
    keyboard's branch scorer does) without a second copy of the weights."""
    convs = (attention.q, attention.k, attention.v)
    packed = torch.cat([conv.weight.data[:, :, 0, 0].t() for conv in convs], dim=1)
    width = convs[0].out_channels
    for j, conv in enumerate(convs):
        conv.weight.data = packed[:, j * width : (j + 1) * width].t()[:, :, None, None]
    attention.qkv_weight = packed
