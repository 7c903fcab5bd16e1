"""Building blocks shared by every MLX family. Activations are `(B, S, C)`, MLX's natural layout;
attention runs on `(B, H, S, D)` through `mx.fast.scaled_dot_product_attention`, and layer norm is
`nn.LayerNorm`, which calls `mx.fast.layer_norm`.

These mirror `ane_model/layers.py` name for name (`attn.q`, `mlp.fc1`, `attn_norm`, ...), so both
load the canonical weights of `canonical/` without a mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from canonical.config import Activation
from canonical.errors import CheckpointError

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,  # the exact, erf-based GELU
    "gelu_tanh": nn.gelu_approx,  # GPT-2's tanh approximation
    "relu": nn.relu,
    "silu": nn.silu,
}

DTYPES = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}


class Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (hidden // num_heads) ** -0.5
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))

    def _heads(self, x: mx.array) -> mx.array:
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, self.num_heads, -1).transpose(0, 2, 1, 3)  # (B, H, S, D)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache=None, layer: int = 0) -> mx.array:
        batch, seq, _ = x.shape  # (B, S, C)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, Sk, D)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)  # (B, H, S, D)
        return self.o(out.transpose(0, 2, 1, 3).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: Activation):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


def causal_mask(query_len: int, offset: int) -> mx.array | None:
    """Boolean (Sq, Sk) mask, True where query i (at position offset + i) may see key j <= offset + i.

    None for a single query: it sees the whole cache, and the kernel takes its fastest path."""
    if query_len == 1:
        return None
    queries = mx.arange(offset, offset + query_len)[:, None]
    keys = mx.arange(offset + query_len)[None, :]
    return keys <= queries


def padding_mask(attention_mask: mx.array) -> mx.array:
    """(B, S) of 1 = token, 0 = padding -> boolean (B, 1, 1, Sk), broadcast over heads and queries."""
    return (attention_mask != 0)[:, None, None, :]


def to_mx(tensor, dtype: mx.Dtype) -> mx.array:
    """A torch tensor, numpy array or mx.array as an mx.array of `dtype` (via fp32: numpy has no bf16)."""
    if isinstance(tensor, mx.array):
        return tensor.astype(dtype) if mx.issubdtype(tensor.dtype, mx.floating) else tensor
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().float().numpy()
    return mx.array(np.asarray(tensor, dtype=np.float32)).astype(dtype)


def quantizable(group_size: int) -> Callable[[str, nn.Module], bool]:
    """nn.quantize's predicate: every Linear/Embedding whose input width splits into whole groups
    (MLX quantizes along the last axis in groups; a width of 200 cannot take groups of 64)."""

    def predicate(_path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    return predicate


def build(
    model: nn.Module,
    weights: Mapping[str, object],
    dtype: mx.Dtype,
    bits: int | None = None,
    group_size: int = 64,
    packed: bool = False,
) -> nn.Module:
    """Fill `model` with canonical weights and, with `bits`, quantize it (MLX affine, `nn.quantize`).

    `packed`: the weights are already quantized (an exported MLX directory): the layers that have
    `.scales` are swapped for quantized ones first, as mlx-lm does, and then loaded as they are."""
    if packed:
        nn.quantize(model, group_size, bits, class_predicate=lambda path, _: f"{path}.scales" in weights)
    load_canonical(model, weights, dtype)
    if bits and not packed:
        nn.quantize(model, group_size, bits, class_predicate=quantizable(group_size))
        mx.eval(model.parameters())
    return model


def load_canonical(model: nn.Module, weights: Mapping[str, object], dtype: mx.Dtype) -> None:
    """Copy canonical weights into `model`, whose parameter names are the canonical names.

    Floating tensors are cast to `dtype`; the packed integer weights of a quantized layer keep theirs."""
    expected = {name for name, _ in _flat(model.parameters())}
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise CheckpointError(f"canonical weights do not fit the model: missing {missing[:3]}, extra {extra[:3]}")
    shapes = dict(_flat(model.parameters()))
    arrays = []
    for name in sorted(expected):
        array = to_mx(weights[name], dtype)
        if tuple(array.shape) != tuple(shapes[name].shape):
            raise CheckpointError(f"weight '{name}': shape {list(array.shape)} cannot fill {list(shapes[name].shape)}")
        arrays.append((name, array))
    model.load_weights(arrays, strict=True)
    mx.eval(model.parameters())


def _flat(tree) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return tree_flatten(tree)
