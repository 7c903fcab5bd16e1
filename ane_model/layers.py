"""Building blocks shared by every ANE-layout family. Tensors in the hot path are `(B, C, 1, S)`.

Each layout trick names the rule it serves (the numbered ANE rules in DESIGN.md, from Apple's
"Deploying Transformers on the Apple Neural Engine")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from canonical.config import Activation
from canonical.errors import CheckpointError

# Additive mask value: large enough that exp() underflows to 0, small enough to stay finite in fp16.
MASK_VALUE = -1e4
# The ANE rejects very large dimensions (rule 7); a vocabulary head is split into chunks of at most this.
ANE_MAX_CHANNELS = 16384


def conv_linear(fan_in: int, fan_out: int, bias: bool = True) -> nn.Conv2d:
    # Rule 2: nn.Linear becomes a 1x1 Conv2d over the channel axis of (B, C, 1, S).
    return nn.Conv2d(fan_in, fan_out, kernel_size=1, bias=bias)


def activation_fn(name: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }
    return table[name]


class LayerNormANE(nn.Module):
    """Layer norm over the channel axis of (B, C, 1, S), out = x_hat * weight + bias (rule 5).

    Rule 6 (fp16 overflow): squaring activations of a few hundred overflows fp16, and real GPT-2
    residuals reach thousands. The centred input is divided by its per-position max-abs before the
    variance, so the sum of squares stays <= C; the same division appears in eps, so the result is
    mathematically unchanged."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))  # stored broadcast-ready: no reshape
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S)
        centred = x - x.mean(dim=1, keepdim=True)
        scale = centred.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 1, 1, S)
        unit = centred / scale
        variance = (unit * unit).mean(dim=1, keepdim=True)
        x_hat = unit * torch.rsqrt(variance + self.eps / (scale * scale))
        return x_hat * self.weight + self.bias


class ChunkedHead(nn.Module):
    """A vocabulary projection split along its output channels (rule 7)."""

    def __init__(self, fan_in: int, vocab: int, bias: bool, chunk: int = ANE_MAX_CHANNELS):
        super().__init__()
        sizes = [min(chunk, vocab - start) for start in range(0, vocab, chunk)]
        self.chunks = nn.ModuleList(conv_linear(fan_in, size, bias) for size in sizes)

    def forward_chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [chunk(x) for chunk in self.chunks]  # each (B, V_j, 1, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.forward_chunks(x), dim=1)  # (B, V, 1, S)

    def canonical_to_chunks(self, prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split a canonical `(V, C)` head weight (and bias) into this module's per-chunk names."""
        sizes = [c.out_channels for c in self.chunks]
        out = {}
        for leaf in ("weight", "bias"):
            if f"{prefix}.{leaf}" in weights:
                for j, part in enumerate(weights[f"{prefix}.{leaf}"].split(sizes, dim=0)):
                    out[f"{prefix}.chunks.{j}.{leaf}"] = part
        return out


def split_einsum_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, mask: torch.Tensor
) -> torch.Tensor:
    """Multi-head attention, one head at a time (rule 3).

    q: (B, C, 1, Sq) already scaled; k, v: (B, C, 1, Sk); mask: additive, broadcastable to
    (B, Sk, 1, Sq). Returns (B, C, 1, Sq)."""
    head_dim = q.shape[1] // num_heads
    queries = q.split(head_dim, dim=1)  # H x (B, d, 1, Sq)
    keys = k.transpose(1, 3).split(head_dim, dim=3)  # H x (B, Sk, 1, d): rule 4, the one transpose
    values = v.split(head_dim, dim=1)  # H x (B, d, 1, Sk)
    heads = []
    for qh, kh, vh in zip(queries, keys, values, strict=True):
        scores = torch.einsum("bchq,bkhc->bkhq", qh, kh) + mask  # (B, Sk, 1, Sq)
        weights = scores.softmax(dim=1)  # rule 3: softmax over the key axis
        heads.append(torch.einsum("bkhq,bchk->bchq", weights, vh))  # (B, d, 1, Sq)
    return torch.cat(heads, dim=1)


class Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (hidden // num_heads) ** -0.5
        self.q, self.k, self.v, self.o = (conv_linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        q = self.q(x) * self.scale  # rule 6: scale before the product keeps fp16 scores small
        k, v = self.k(x), self.v(x)  # (B, C, 1, S)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, C, 1, Sk)
        return self.o(split_einsum_attention(q, k, v, self.num_heads, mask))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: Activation):
        super().__init__()
        self.fc1 = conv_linear(hidden, intermediate)
        self.fc2 = conv_linear(intermediate, hidden)
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def causal_mask(query_len: int, key_len, offset, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (1, Sk, 1, Sq): query i (at position offset + i) sees keys 0..offset + i.

    Built from comparisons of `arange` with `unsqueeze`, which converts to Core ML on every path
    (static or dynamic shapes); `offset` may be an int or a 0-d tensor."""
    keys = torch.arange(key_len).unsqueeze(1).unsqueeze(2)  # (Sk, 1, 1)
    queries = (torch.arange(query_len) + offset).unsqueeze(0).unsqueeze(0)  # (1, 1, Sq)
    blocked = (keys > queries).unsqueeze(0)  # (1, Sk, 1, Sq)
    return blocked.to(dtype) * MASK_VALUE


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) of 1 = token, 0 = padding -> additive (B, Sk, 1, Sq), Sq = Sk.

    Rule 1: spelled out over the queries (an outer product with ones) rather than left as
    (B, Sk, 1, 1) to broadcast, which would put a size-1 axis last."""
    blocked = (1.0 - attention_mask.to(dtype)) * MASK_VALUE  # (B, Sk)
    queries = torch.ones_like(blocked[:1])  # (1, Sq)
    return (blocked.unsqueeze(2) * queries.unsqueeze(0)).unsqueeze(2)  # (B, Sk, Sq) -> (B, Sk, 1, Sq)


def load_canonical(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy canonical weights into `module`, whose parameter names mirror the canonical names.

    Canonical tensors differ from ours only by singleton axes (rule 2: a linear `(out, in)` becomes a
    conv `(out, in, 1, 1)`; norms are stored `(1, C, 1, 1)`), so each is reshaped after a check."""
    params = module.state_dict()
    missing = sorted(set(params) - set(weights))
    extra = sorted(set(weights) - set(params))
    if missing or extra:
        raise CheckpointError(f"canonical weights do not fit the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, target in params.items():
        source = weights[name]
        if [d for d in source.shape if d != 1] != [d for d in target.shape if d != 1]:
            raise CheckpointError(f"weight '{name}': shape {list(source.shape)} cannot fill {list(target.shape)}")
        target.copy_(source.reshape(target.shape).to(target.dtype))
