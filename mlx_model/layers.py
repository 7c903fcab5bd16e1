"""Building blocks shared by every MLX family. Activations are `(B, S, C)`, MLX's natural layout;
attention runs on `(B, H, S, D)` through `mx.fast.scaled_dot_product_attention`, RoPE through
`mx.fast.rope`, and the norms are `nn.LayerNorm` and `nn.RMSNorm`, which call `mx.fast.layer_norm` and
`mx.fast.rms_norm`.

These mirror `ane_model/layers.py` name for name (`attn.q`, `mlp.fc1`, `attn_norm`, ...), so both
load the canonical weights of `canonical/` without a mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from canonical.attention import AttentionShape
from canonical.cache import KVCacheProtocol
from canonical.config import Activation, ModelConfig
from canonical.errors import CheckpointError
from canonical.weights import Selected

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,  # the exact, erf-based GELU
    "gelu_tanh": nn.gelu_approx,  # GPT-2's tanh approximation
    "relu": nn.relu,
    "silu": nn.silu,
}

DTYPES = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}


class Attention(nn.Module):
    """Multi-head attention over `(B, S, C)`; `(B, H, S, D)` inside, of the shape its config implies
    (`canonical.attention.AttentionShape`): with grouped key/value heads the kernel shares each among H / G query
    heads without repeating them. `rope_inv_freq`: the D/2 RoPE frequencies in radians per position (rotate-half
    pairs `(i, i + D/2)`, as transformers' Llama), or None without RoPE."""

    def __init__(self, shape: AttentionShape, rope_inv_freq: Sequence[float] | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        self.scale = shape.scale
        self.q = nn.Linear(shape.hidden, shape.q_width, bias=shape.qkv_bias)
        self.k = nn.Linear(shape.hidden, shape.kv_width, bias=shape.qkv_bias)
        self.v = nn.Linear(shape.hidden, shape.kv_width, bias=shape.qkv_bias)
        self.o = nn.Linear(shape.q_width, shape.hidden, bias=shape.out_bias)
        if shape.qk_norm_eps is not None:
            self.q_norm: nn.Module = nn.RMSNorm(self.head_dim, eps=shape.qk_norm_eps)  # a family may swap it
            self.k_norm: nn.Module = nn.RMSNorm(self.head_dim, eps=shape.qk_norm_eps)
        # mx.fast.rope's `freqs` are the reciprocals (positions per radian); the leading underscore keeps
        # them out of the parameters, so they are neither loaded nor cast nor quantized.
        self._rope_freqs = None if rope_inv_freq is None else mx.array([1.0 / f for f in rope_inv_freq])

    def _heads(self, x: mx.array, heads: int, norm: nn.Module | None = None) -> mx.array:
        batch, seq, _ = x.shape
        x = x.reshape(batch, seq, heads, -1)  # (B, S, H, D)
        if norm is not None:
            x = norm(x)
        return x.transpose(0, 2, 1, 3)  # (B, H, S, D)

    def _rope(self, x: mx.array, offset: int) -> mx.array:
        if self._rope_freqs is None:
            return x
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._rope_freqs
        )

    def __call__(
        self, x: mx.array, mask: mx.array | None = None, cache: KVCacheProtocol | None = None, layer: int = 0
    ) -> mx.array:
        batch, seq, _ = x.shape  # (B, S, C)
        q = self._heads(self.q(x), self.num_heads, getattr(self, "q_norm", None))  # (B, H, S, D)
        k = self._heads(self.k(x), self.num_kv_heads, getattr(self, "k_norm", None))  # (B, G, S, D)
        v = self._heads(self.v(x), self.num_kv_heads)
        offset = 0 if cache is None else cache.offset
        q, k = self._rope(q, offset), self._rope(k, offset)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, G, Sk, D)
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


class GatedMLP(nn.Module):
    """The Llama family's gated MLP: `down(act(gate(x)) * up(x))` (SwiGLU with SiLU)."""

    def __init__(self, hidden: int, intermediate: int, activation: Activation, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=bias)
        self.up = nn.Linear(hidden, intermediate, bias=bias)
        self.down = nn.Linear(intermediate, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.down(self.act(self.gate(x)) * self.up(x))


def causal_mask(query_len: int, offset: int, window: int | None = None) -> mx.array | None:
    """Boolean (Sq, Sk) mask, True where query i (at position offset + i) may see key j <= offset + i; with a
    `window` (sliding-window attention), only the last `window` of them, j > offset + i - window.

    None for a single query that sees the whole cache: the kernel then takes its fastest path."""
    if query_len == 1 and (window is None or offset < window):
        return None
    queries = mx.arange(offset, offset + query_len)[:, None]
    keys = mx.arange(offset + query_len)[None, :]
    if window is None:
        return keys <= queries
    return (keys <= queries) & (keys > queries - window)


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


_Model = TypeVar("_Model", bound=nn.Module)


def build(
    model: _Model,
    weights: Mapping[str, object],
    dtype: mx.Dtype,
    bits: int | None = None,
    group_size: int = 64,
    packed: bool = False,
) -> _Model:
    """Fill `model` with canonical weights and, with `bits`, quantize it (MLX affine, `nn.quantize`).

    `packed`: the weights are already quantized (an exported MLX directory): the layers that have
    `.scales` are swapped for quantized ones first, as mlx-lm does, and then loaded as they are."""
    if packed:
        nn.quantize(
            model,
            group_size,
            bits,  # type: ignore[arg-type]  # mlx annotates `bits: int = None`; None is its default width
            class_predicate=lambda path, _: f"{path}.scales" in weights,
        )
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


def without_tied_head(cfg: ModelConfig, weights: Mapping[str, object]) -> Mapping[str, object]:
    """A tied model's head is its token embedding (`nn.Embedding.as_linear`), stored once: `lm_head.*` dropped."""
    if not getattr(cfg, "tie_word_embeddings", False):
        return weights
    return Selected(weights, lambda name: not name.startswith("lm_head."))


def _flat(tree) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return cast(list[tuple[str, mx.array]], tree_flatten(tree))  # a list: no `destination` given
