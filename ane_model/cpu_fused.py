"""Run an ANE-layout model on the CPU through fused torch kernels: same weights, same layout, same math.

The ANE layout spells every operation out so that Core ML maps each to a Neural Engine op: a layer
norm is fifteen elementwise kernels, attention is four per head, a projection is a 1x1 conv. Run
eagerly on a CPU, a single-token decode of a small model is then ~270 kernel launches of a few
microseconds each, and the launches, not the arithmetic, set the latency a keyboard sees. Here the
same modules run through one kernel each where torch has one: `F.layer_norm` / `F.rms_norm` over the
channel axis, `F.scaled_dot_product_attention` over all heads at once (grouped-query heads without
repeating keys/values; RoPE and Qwen3's q/k norm applied on the (B, H, S, D) view before it), a
SwiGLU's gate and up projections as one product, and a 1x1 conv as one `addmm` with the batch folded
into the positions (torch sends a 1x1 conv on one thread to its im2col path, ~5x slower than the
matmul for a batch of a few positions).

`fuse_for_cpu` swaps the class of each module in place: parameters, buffers and the (B, C, 1, S)
tensors between modules are untouched, so the fused model's outputs equal the unfused one's to
rounding (tests/test_ane_parity.py and tests/test_llama_ane_parity.py check both against
transformers). Export and conversion build their own, unfused model: `convert/` never sees these classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ane_model.layers import Attention, HeadChunk, LayerNormANE, RMSNormANE, Rope, SwiGLU


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


class FusedHeadChunk(HeadChunk):
    """A vocabulary head chunk as `FusedConv1x1` computes a projection: one product over the positions with
    the weight stored transposed (`fuse_for_cpu` re-strides it in place; a tied embedding's row gathers read
    the same tensor, a few rows per call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S) -> (B, V_j, 1, S)
        batch, channels, _, seq = x.shape
        rows = x.permute(0, 3, 1, 2).reshape(batch * seq, channels)
        weight_t = self.weight.t()  # (C, V_j), rows contiguous
        y = rows @ weight_t if self.bias is None else torch.addmm(self.bias, rows, weight_t)
        return y.view(batch, seq, -1, 1).permute(0, 2, 3, 1)


class FusedLayerNorm(LayerNormANE):
    """No fp16 overflow guard needed: torch's CPU layer norm accumulates in fp32 whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), (channels,), self.weight.view(channels), self.bias.view(channels), self.eps
        )
        return y.permute(0, 3, 1, 2)


class FusedRMSNorm(RMSNormANE):
    """No fp16 overflow guard needed: torch's CPU RMS norm accumulates in fp32 whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        eps = self.eps if self.input_scale == 1.0 else self.eps / self.input_scale**2  # see RMSNormANE
        y = F.rms_norm(x.permute(0, 2, 3, 1), (channels,), self.weight.view(channels), eps)
        return y.permute(0, 3, 1, 2)


class FusedAttention(Attention):
    def forward(self, x: Tensor, mask: Tensor, cache=None, layer: int = 0, rope: Rope | None = None) -> Tensor:
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim

        def per_head(t: torch.Tensor, n: int) -> torch.Tensor:  # (B, n*D, 1, S) -> (B, n, S, D), a view
            return t.reshape(t.shape[0], n, head_dim, t.shape[-1]).transpose(2, 3)

        if self.q_norm is None and rope is None:  # GPT-2, BERT
            q = self.q(x) * self.scale
            k, v = self.k(x), self.v(x)
            if cache is not None:
                k, v = cache.update(layer, k, v)
            q, k = per_head(q, heads), per_head(k, kv_heads)
        else:
            q, k, v = per_head(self.q(x), heads), per_head(self.k(x), kv_heads), self.v(x)
            if self.q_norm is not None and self.k_norm is not None:
                # Qwen3: RMSNorm over each head's D channels, the last axis here
                q = F.rms_norm(q, (head_dim,), self.q_norm.weight.view(head_dim), self.q_norm.eps)
                k = F.rms_norm(k, (head_dim,), self.k_norm.weight.view(head_dim), self.k_norm.eps)
            if rope is not None:  # the tables' first head as (S, D); rolling by D/2 swaps the halves
                cos, signed_sin = (t[0, :head_dim, 0, :].t() for t in rope)
                q = q * cos + q.roll(head_dim // 2, dims=-1) * signed_sin
                k = k * cos + k.roll(head_dim // 2, dims=-1) * signed_sin
            q = q * self.scale
            if cache is not None:
                batch, _, seq, _ = k.shape
                k, v = cache.update(layer, k.transpose(2, 3).reshape(batch, kv_heads * head_dim, 1, seq), v)
                k = per_head(k, kv_heads)
        batch, _, query_len, _ = q.shape
        # The additive mask (B | 1, Sk, 1, Sq) as SDPA's (B | 1, 1, Sq, Sk); q is already scaled.
        out = F.scaled_dot_product_attention(
            q, k, per_head(v, kv_heads), attn_mask=mask.permute(0, 2, 3, 1), scale=1.0, enable_gqa=kv_heads != heads
        )
        merged = out.transpose(1, 2).reshape(batch, query_len, heads * head_dim)  # (B, Sq, H*D): positions-major
        return self.o(merged.transpose(1, 2).unsqueeze(2))


class FusedSwiGLU(SwiGLU):
    """Gate and up as one product with the (C, 2F) matrix `fuse_for_cpu` packs (`gate_up_weight`; the two
    convs' weights become views of its halves), then act(gate) * up and the down conv."""

    gate_up_weight: torch.Tensor  # set by `_pack_gate_up`
    gate_up_bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S)
        batch, channels, _, seq = x.shape
        rows = x.permute(0, 3, 1, 2).reshape(batch * seq, channels)
        both = (
            rows @ self.gate_up_weight
            if self.gate_up_bias is None
            else torch.addmm(self.gate_up_bias, rows, self.gate_up_weight)
        )
        gate, up = both.split(self.gate.out_channels, dim=1)  # (B*S, F) each
        inner = self.act(gate) * up
        return self.down(inner.view(batch, seq, -1, 1).permute(0, 2, 3, 1))


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1


_FUSED = {
    LayerNormANE: FusedLayerNorm,
    RMSNormANE: FusedRMSNorm,
    Attention: FusedAttention,
    SwiGLU: FusedSwiGLU,
    HeadChunk: FusedHeadChunk,
}


def fuse_for_cpu(model: nn.Module) -> nn.Module:
    """Switch `model`'s modules, in place, to their fused CPU forms; returns `model`."""
    for module in model.modules():
        if type(module) is HeadChunk:
            module.__class__ = FusedHeadChunk
            module.weight.data = module.weight.data.t().contiguous().t()  # the same (V_j, C) values, (C, V_j) in memory
        elif type(module) in _FUSED:
            module.__class__ = _FUSED[type(module)]
        elif type(module) is nn.Conv2d and _is_pointwise(module):
            module.__class__ = FusedConv1x1
            transposed = module.weight.data[:, :, 0, 0].t().contiguous()  # (C, C') in memory
            module.weight.data = transposed.t()[:, :, None, None]  # the same values, shape (C', C, 1, 1)
    for module in model.modules():
        if isinstance(module, FusedSwiGLU):
            _pack_gate_up(module)
    return model


def _pack_gate_up(mlp: FusedSwiGLU) -> None:
    """Gate and up's (C, F) matrices side by side in one (C, 2F) buffer, each conv's weight a view of its half."""
    convs = (mlp.gate, mlp.up)
    packed = torch.cat([conv.weight.data[:, :, 0, 0].t() for conv in convs], dim=1)
    width = convs[0].out_channels
    for j, conv in enumerate(convs):
        conv.weight.data = packed[:, j * width : (j + 1) * width].t()[:, :, None, None]
    mlp.gate_up_weight = packed
    gate_bias, up_bias = mlp.gate.bias, mlp.up.bias  # both or neither
    mlp.gate_up_bias = None if gate_bias is None or up_bias is None else torch.cat([gate_bias.data, up_bias.data])
