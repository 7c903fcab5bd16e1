"""Building blocks shared by every ANE-layout family. Tensors in the hot path are `(B, C, 1, S)`.

Each layout trick names the rule it serves (the numbered ANE rules of docs/ane-rules.md, from Apple's
"Deploying Transformers on the Apple Neural Engine")."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canonical.attention import AttentionShape
from canonical.config import Activation
from canonical.errors import CheckpointError
from canonical.weights import Selected

Rope = tuple[Tensor, Tensor]  # (cos, signed_sin) tables of `RotaryEmbedding`, as a block passes them to attention

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
        x_hat = unit * torch.rsqrt(variance + eps_over_square(self.eps, scale))
        return x_hat * self.weight + self.bias


class RMSNormANE(nn.Module):
    """RMS norm over the channel axis of (B, C, 1, S), out = x_hat * weight (rule 5, without centring).

    Rule 6 (fp16 overflow): as in `LayerNormANE`, the input is divided by its per-position max-abs before
    the mean of squares (which then stays <= 1), and eps by the square of the same scale, so the result
    is mathematically unchanged: x / rms(x) = (x/s) / sqrt(mean((x/s)^2) + eps/s^2). Also serves a
    per-head norm (Qwen3's q/k norm) applied to one head's (B, D, 1, S) slice.

    `input_scale` k (rule 6, Gemma 3's scaled residual stream): the input is the true activation divided by k, and
    the output is the norm of the true activation: x/rms(x) = (x/k) / sqrt(mean((x/k)^2) + eps/k^2), so eps is
    divided by k^2, as (s*k)^2 in the term above (eps/k^2 alone would underflow fp16, (s*k)^2 only where the
    term is negligible)."""

    def __init__(self, channels: int, eps: float, input_scale: float = 1.0):
        super().__init__()
        self.eps = eps
        self.input_scale = input_scale
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))  # stored broadcast-ready: no reshape

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S)
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 1, 1, S)
        unit = x / scale
        mean_square = (unit * unit).mean(dim=1, keepdim=True)
        if self.input_scale != 1.0:
            true_scale = scale * self.input_scale  # the max-abs of the activation the input stands for
            return unit * torch.rsqrt(mean_square + eps_over_square(self.eps, true_scale)) * self.weight
        return unit * torch.rsqrt(mean_square + eps_over_square(self.eps, scale)) * self.weight


def eps_over_square(eps: float, scale: torch.Tensor) -> torch.Tensor:
    """eps / scale^2, the norms' eps term (rule 6), as a division of two tensors.

    Written `eps / (scale * scale)`, torch records a reciprocal times eps, which coremltools converts to MIL's
    `inverse`, and `inverse` computes 1 / (x + 1e-4): at a position whose max-abs is below ~0.1 the term, and with
    it the norm, comes out wrong on Core ML (a 1e-3 activation's norm by a factor of ~3). A tensor numerator
    converts to `real_div`, which is exact."""
    return torch.full_like(scale, eps) / (scale * scale)


class HeadChunk(nn.Module):
    """One chunk of a vocabulary head: logits (B, V_j, 1, S) = weight (V_j, C) @ x (B, C, S) per position.

    The weight is kept as an embedding table is, `(V_j, C)`, and applied as a matmul rather than a 1x1
    conv (rule 2's usual form): a conv needs `(V_j, C, 1, 1)`, which coremltools folds into a constant of its
    own, so a tied embedding's gather and the head would store the table twice. As a matmul, the gather
    (`ChunkedHead.embed`) and the product read one constant. The product keeps the (B, V_j, 1, S) layout
    (rule 1): no transpose of activations or weights."""

    def __init__(self, fan_in: int, size: int, bias: bool):
        super().__init__()
        self.in_channels, self.out_channels = fan_in, size
        self.weight = nn.Parameter(torch.empty(size, fan_in).normal_(std=fan_in**-0.5))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S) -> (B, V_j, 1, S)
        y = torch.matmul(self.weight, x.squeeze(2))  # (V_j, C) @ (B, C, S): Core ML's matmul of the constant
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.unsqueeze(2)


class ChunkedHead(nn.Module):
    """A vocabulary projection split along its output channels (rule 7), each chunk a `HeadChunk`.

    A tied token embedding reads its rows from the same chunks (`embed`), so a package stores the table once."""

    def __init__(self, fan_in: int, vocab: int, bias: bool, chunk: int = ANE_MAX_CHANNELS):
        super().__init__()
        sizes = [min(chunk, vocab - start) for start in range(0, vocab, chunk)]
        self.starts = list(range(0, vocab, chunk))
        self.chunks = nn.ModuleList(HeadChunk(fan_in, size, bias) for size in sizes)

    @property
    def head_chunks(self) -> list[HeadChunk]:
        """The chunks, as what they are (to a type checker, an `nn.ModuleList` holds plain modules)."""
        return cast(list[HeadChunk], list(self.chunks))

    def forward_chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [chunk(x) for chunk in self.chunks]  # each (B, V_j, 1, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.forward_chunks(x), dim=1)  # (B, V, 1, S)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (B, S) of the head's weight, (B, S, C): the token embedding of a tied model.

        One chunk: a gather. Several (vocabularies above 16,384): each chunk gathers the ids clipped into its
        range and keeps the rows whose id is its own, and the chunks' rows are summed, so no (V, C) table is
        ever assembled (coremltools would fold a concatenation of the chunks into a second copy)."""
        chunks = self.head_chunks
        if len(chunks) == 1:
            return F.embedding(ids, chunks[0].weight)
        rows: torch.Tensor | None = None
        for start, chunk in zip(self.starts, chunks, strict=True):
            local = ids - start
            clipped = local.clamp(0, chunk.out_channels - 1)
            own = (clipped == local).unsqueeze(-1).to(chunk.weight.dtype)  # (B, S, 1): 1 where the id is this chunk's
            part = F.embedding(clipped, chunk.weight) * own
            rows = part if rows is None else rows + part
        assert rows is not None  # several chunks (a vocabulary is never empty)
        return rows

    def canonical_to_chunks(self, prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split a canonical `(V, C)` head weight (and bias) into this module's per-chunk names."""
        sizes = [c.out_channels for c in self.head_chunks]
        out = {}
        for leaf in ("weight", "bias"):
            if f"{prefix}.{leaf}" in weights:
                for j, part in enumerate(weights[f"{prefix}.{leaf}"].split(sizes, dim=0)):
                    out[f"{prefix}.chunks.{j}.{leaf}"] = part
        return out


def split_einsum_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    mask: torch.Tensor,
    num_kv_heads: int | None = None,
) -> torch.Tensor:
    """Multi-head attention, one head at a time (rule 3).

    q: (B, H*D, 1, Sq) already scaled; k, v: (B, G*D, 1, Sk) with G = num_kv_heads (default H);
    mask: additive, broadcastable to (B, Sk, 1, Sq). Returns (B, H*D, 1, Sq).

    Grouped-query attention: query head h reads key/value head h // (H/G) of the G that the cache
    holds. Repeated keys/values are never built; each group's keys are transposed once and shared."""
    head_dim = q.shape[1] // num_heads
    group = num_heads // (num_kv_heads or num_heads)
    queries = q.split(head_dim, dim=1)  # H x (B, D, 1, Sq)
    keys = k.transpose(1, 3).split(head_dim, dim=3)  # G x (B, Sk, 1, D): rule 4, the one transpose
    values = v.split(head_dim, dim=1)  # G x (B, D, 1, Sk)
    heads = []
    for h, qh in enumerate(queries):
        kh, vh = keys[h // group], values[h // group]
        scores = torch.einsum("bchq,bkhc->bkhq", qh, kh) + mask  # (B, Sk, 1, Sq)
        weights = scores.softmax(dim=1)  # rule 3: softmax over the key axis
        heads.append(torch.einsum("bkhq,bchk->bchq", weights, vh))  # (B, D, 1, Sq)
    return torch.cat(heads, dim=1)


class RotaryEmbedding(nn.Module):
    """RoPE tables as buffers; a forward only looks rows up by position, so the graph holds no trigonometry of
    runtime values (rule 6: in fp16 an angle of position x frequency near position 2,000 is already rounded to a
    whole radian; rule 7: a gather of rows is a static-shape op).

    Computed as transformers computes them, in float32: inv_freq as a float32 tensor, freqs = position
    (float32) times inv_freq, emb = cat(freqs, freqs) (rotate_half pairs channel i with i + D/2 of each
    head, not neighbours), cos and sin of it. The sign of rotate_half, cat(-x2, x1), is folded into the
    stored sine: `rotate(x) = x * cos + swap_halves(x) * signed_sin` with signed_sin = cat(-sin, sin).
    Tables are (D, T), channels first, so a lookup is already (D, S) (rule 4). Not persistent: they are
    derived from the config, not weights.

    Rows are made as positions are reached (doubling, up to max_positions), since every row depends on its
    position alone: two tables of a 128K context at D = 128 are 128 MB in fp32, and a model that states millions
    of positions would need gigabytes it never reads. An export fixes the rows to its context (`limit`)."""

    INITIAL_ROWS = 4096
    cos: torch.Tensor  # buffers (register_buffer)
    signed_sin: torch.Tensor

    def __init__(self, inverse_frequencies: list[float], max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.inverse_frequencies = list(inverse_frequencies)  # (D/2,): kept as numbers, never cast with the model
        self.head_dim = 2 * len(inverse_frequencies)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("signed_sin", torch.empty(0), persistent=False)
        self._build(min(max_positions, self.INITIAL_ROWS))

    def _build(self, rows: int) -> None:
        dtype = self.cos.dtype if self.cos.numel() else torch.float32  # a model cast to fp16 keeps fp16 tables
        inv_freq = torch.tensor(self.inverse_frequencies, dtype=torch.float32)
        freqs = torch.arange(rows, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, D/2)
        emb = torch.cat([freqs, freqs], dim=1)  # (T, D)
        half = inv_freq.shape[0]
        sin = emb.sin()
        self.cos = emb.cos().t().contiguous().to(dtype)  # (D, T)
        self.signed_sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=1).t().contiguous().to(dtype)

    @property
    def positions(self) -> int:
        return self.cos.shape[1]

    def limit(self, positions: int) -> None:
        """Hold the rows of exactly the first `positions` positions: an export for a context of that many tokens
        stores no more (Qwen3's 40,960 or Llama 3.x's 131,072 positions would otherwise be up to 128 MB of
        constants in a package that can never reach them)."""
        self._build(min(positions, self.max_positions))

    def forward(self, seq: int, offset, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sine for positions offset .. offset + seq - 1, tiled over `heads` heads:
        each (1, heads*D, 1, S). `offset` may be an int or a 0-d / 1-element int tensor (export)."""
        if isinstance(offset, int) and offset + seq > self.positions:  # eager: make the rows reached
            self._build(min(max(offset + seq, 2 * self.positions), self.max_positions))
        positions = torch.arange(seq) + offset  # the index pattern of `causal_mask`, a gather of rows
        tables = []
        for table in (self.cos, self.signed_sin):
            rows = table.index_select(1, positions)  # (D, S)
            tables.append(rows.repeat(heads, 1).unsqueeze(0).unsqueeze(2))  # (1, heads*D, 1, S)
        return tables[0], tables[1]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """RoPE on every head of x (B, n*D, 1, S) at once, given tables tiled over at least n heads.

    rotate_half(x) = cat(-x2, x1) per head; the minus lives in `signed_sin`, so all that is left is
    swapping the halves of each head: one split and one concat for all heads (rule 4: no reshape)."""
    channels = x.shape[1]
    if cos.shape[1] != channels:  # keys: the first G of the H heads' tiles (a full-width slice would export
        cos, signed_sin = cos[:, :channels], signed_sin[:, :channels]  # as an `alias` Core ML cannot convert)
    halves = x.split(head_dim // 2, dim=1)  # 2n x (B, D/2, 1, S)
    swapped = torch.cat([halves[i ^ 1] for i in range(len(halves))], dim=1)  # (x2, x1) per head
    return x * cos + swapped * signed_sin


class Attention(nn.Module):
    """Self-attention with 1x1-conv projections (rule 2) and split-einsum heads (rule 3), of the shape its config
    implies (`canonical.attention.AttentionShape`): H query heads sharing G key/value heads (GQA), a head width D
    independent of hidden / H, biases switched per projection, an optional RMSNorm of each head's queries and keys
    (Qwen3), and RoPE where tables are passed to `forward`. The cache holds the G*D key/value channels only, never
    repeated ones."""

    def __init__(self, shape: AttentionShape):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        self.scale = shape.scale
        self.q = conv_linear(shape.hidden, shape.q_width, shape.qkv_bias)
        self.k = conv_linear(shape.hidden, shape.kv_width, shape.qkv_bias)
        self.v = conv_linear(shape.hidden, shape.kv_width, shape.qkv_bias)
        self.o = conv_linear(shape.q_width, shape.hidden, shape.out_bias)
        self.q_norm: RMSNormANE | None
        self.k_norm: RMSNormANE | None
        if shape.qk_norm_eps is not None:
            self.q_norm = RMSNormANE(self.head_dim, shape.qk_norm_eps)
            self.k_norm = RMSNormANE(self.head_dim, shape.qk_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def _per_head_norm(self, x: torch.Tensor, norm: RMSNormANE) -> torch.Tensor:
        # Qwen3: RMSNorm over each head's D channels, on its (B, D, 1, S) slice (rule 4: split, not reshape)
        return torch.cat([norm(head) for head in x.split(self.head_dim, dim=1)], dim=1)

    def forward(self, x: Tensor, mask: Tensor, cache=None, layer: int = 0, rope: Rope | None = None) -> Tensor:
        """x (B, C, 1, S); rope: (cos, signed_sin) from `RotaryEmbedding`, tiled over the query heads."""
        q, k, v = self.q(x), self.k(x), self.v(x)  # (B, H*D, 1, S), (B, G*D, 1, S)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither
            q, k = self._per_head_norm(q, self.q_norm), self._per_head_norm(k, self.k_norm)
        if rope is not None:
            q, k = apply_rotary(q, *rope, self.head_dim), apply_rotary(k, *rope, self.head_dim)
        q = q * self.scale  # rule 6: scale before the product keeps fp16 scores small
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, G*D, 1, Sk): keys after RoPE, as transformers caches them
        return self.o(split_einsum_attention(q, k, v, self.num_heads, mask, self.num_kv_heads))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: Activation):
        super().__init__()
        self.fc1 = conv_linear(hidden, intermediate)
        self.fc2 = conv_linear(intermediate, hidden)
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """The gated MLP of the Llama family: down(act(gate(x)) * up(x)), three 1x1 convs (rule 2)."""

    def __init__(self, hidden: int, intermediate: int, activation: Activation = "silu", bias: bool = False):
        super().__init__()
        self.gate = conv_linear(hidden, intermediate, bias)
        self.up = conv_linear(hidden, intermediate, bias)
        self.down = conv_linear(intermediate, hidden, bias)
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def causal_mask(query_len: int, key_len, offset, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """Additive mask (1, Sk, 1, Sq): query i (at position offset + i) sees keys 0..offset + i; with a `window`
    (sliding-window attention), only the last `window` of them, offset + i - window + 1 .. offset + i.

    Built from comparisons of `arange` with `unsqueeze`, which converts to Core ML on every path
    (static or dynamic shapes); `offset` may be an int or a 0-d tensor."""
    keys = torch.arange(key_len).unsqueeze(1).unsqueeze(2)  # (Sk, 1, 1)
    queries = (torch.arange(query_len) + offset).unsqueeze(0).unsqueeze(0)  # (1, 1, Sq)
    blocked = (keys > queries).to(dtype)
    if window is not None:  # `maximum` of 0/1 masks is their union (the torch frontend has no bool `|`)
        blocked = torch.maximum(blocked, (keys <= queries - window).to(dtype))
    return blocked.unsqueeze(0) * MASK_VALUE  # (1, Sk, 1, Sq)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) of 1 = token, 0 = padding -> additive (B, Sk, 1, Sq), Sq = Sk.

    Rule 1: spelled out over the queries (an outer product with ones) rather than left as
    (B, Sk, 1, 1) to broadcast, which would put a size-1 axis last."""
    blocked = (1.0 - attention_mask.to(dtype)) * MASK_VALUE  # (B, Sk)
    queries = torch.ones_like(blocked[:1])  # (1, Sq)
    return (blocked.unsqueeze(2) * queries.unsqueeze(0)).unsqueeze(2)  # (B, Sk, Sq) -> (B, Sk, 1, Sq)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")  # fmt: skip


@contextlib.contextmanager
def without_random_init() -> Iterator[None]:
    """Modules built here keep their parameters as allocated: `load_canonical` then overwrites every one of them
    (it refuses weights that miss one), and the random init it replaces costs ~10 ns per parameter (1.2 s for
    GPT-2 124M, half a minute for a 3B model) for values nobody reads."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in saved:
            setattr(nn.init, name, _keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _keep(tensor: Tensor, *args, **kwargs) -> Tensor:
    return tensor


def load_canonical(module: nn.Module, weights: Mapping[str, torch.Tensor], within: tuple[str, ...] = ()) -> None:
    """Copy canonical weights into `module`, whose parameter names mirror the canonical names, one tensor at a time
    (lazy weights are read as they are copied). `within`: only the parameters under these submodules, from the
    weights under them (a chunked conversion's part).

    Canonical tensors differ from ours only by singleton axes (rule 2: a linear `(out, in)` becomes a
    conv `(out, in, 1, 1)`; norms are stored `(1, C, 1, 1)`), so each is reshaped after a check."""

    def inside(name: str) -> bool:
        return not within or name.startswith(tuple(f"{prefix}." for prefix in within))

    params = {name: t for name, t in module.state_dict().items() if inside(name)}
    names = [name for name in weights if inside(name)]
    missing = sorted(set(params) - set(names))
    extra = sorted(set(names) - set(params))
    if missing or extra:
        raise CheckpointError(f"canonical weights do not fit the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, target in params.items():
        source = weights[name]
        if [d for d in source.shape if d != 1] != [d for d in target.shape if d != 1]:
            raise CheckpointError(f"weight '{name}': shape {list(source.shape)} cannot fill {list(target.shape)}")
        target.copy_(source.reshape(target.shape).to(target.dtype))
        del source


_Model = TypeVar("_Model", bound=nn.Module)


def load_causal_lm(model: _Model, weights: Mapping[str, torch.Tensor], within: tuple[str, ...] = ()) -> _Model:
    """Fill a causal LM (its config at `cfg`, a `ChunkedHead` at `lm_head`) from canonical weights, in eval mode, one
    tensor at a time; `within` as for `load_canonical` ("lm_head" for the head's chunks). Tied, as transformers ties
    it: the head's chunks come from `tok_embed.weight`, whatever `lm_head.weight` holds, and serve as the token
    embedding too (stored once)."""
    cfg: Any = model.cfg  # the family's canonical config
    lm_head = model.lm_head
    if not isinstance(lm_head, ChunkedHead):
        raise TypeError(f"{type(model).__name__}.lm_head is not a ChunkedHead")
    tied = cfg.tie_word_embeddings
    table = "tok_embed.weight" if tied else "lm_head.weight"
    if table not in weights:
        raise CheckpointError("canonical weights lack lm_head.weight and the config does not tie it")
    body = Selected(weights, lambda name: not name.startswith("lm_head.") and not (tied and name == table))
    if within:
        parts = tuple(w for w in within if w != "lm_head")
        if parts:
            load_canonical(model, body, parts)
    else:
        unknown = [name for name in body if name.split(".")[0] not in dict(model.named_children())]
        if unknown:
            raise CheckpointError(f"canonical weights do not fit the model: extra {unknown[:3]}")
        load_canonical(model, body, tuple(name for name, _ in model.named_children() if name != "lm_head"))
    if not within or "lm_head" in within:
        head = {"lm_head.weight": weights[table]}
        if not tied and "lm_head.bias" in weights:
            head["lm_head.bias"] = weights["lm_head.bias"]
        chunks = lm_head.canonical_to_chunks("lm_head", head)
        del head
        load_canonical(lm_head, {name.removeprefix("lm_head."): t for name, t in chunks.items()})
    return model.eval()
