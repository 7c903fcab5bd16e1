"""Beam-search branches of a GPT-2 context on the CPU: many short continuations of one cached context,
scored in one batch without copying the context's cache.

The keyboard's word search asks, on every keystroke, for the next-token logits after up to eight
candidate continuations of the same context. Run as an ordinary batch, each row needs its own copy of
the context's keys and values (4 MB per call for the bundled model at 64 tokens), and the model's
module-per-operation forward spends more time dispatching a thousand small tensor ops than doing
arithmetic. Here the same weights are read directly, a layer is a dozen ops, and attention is split in
two (shared-prefix, or "cascade", attention): every row's queries against the one shared context cache
in a single batched product, plus each row against its own few new tokens; one softmax spans both.

Each branch's own keys and values are kept, keyed by its tokens, until the cache changes. A deeper
branch then runs only its last token on top of its parent's (the search extends beams one token at a
time), and when the user's next keystroke turns a scored branch into context (typing the space after a
word the search had already tried) its keys and values move into the cache with no forward at all.

The interface a causal torch backend uses (`ondevice/backends/torch_ane.py`), for any family that offers a
scorer in the registry (`cpu_branch_scorer`): `Scorer(model, cache)`, `logits(sequences)`, `adopt(tokens)`,
`forget()`. A family without one is served by prefill and trim, with the same suggestions.

tests/test_ane_parity.py checks the logits against the model's own batched forward and against one
continuation at a time through the cache, and adoption against prefill."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ane_model.gpt2 import GPT2Model
from ane_model.kv_cache import KVCache

# Branches remembered since the cache last changed: a keystroke adds at most a few dozen.
_MAX_REMEMBERED = 1024


class GPT2Branches:
    def __init__(self, model: GPT2Model, cache: KVCache):
        """model: a GPT-2 after `fuse_for_cpu` (its 1x1 conv weights stored transposed, so the (C_in, C_out)
        views below are contiguous); cache: the KV cache its prefill and decode fill."""
        self.model, self.cache = model, cache
        self.heads, self.hidden = model.cfg.num_heads, model.cfg.hidden_size
        self.layers = [_LayerWeights(block) for block in model.layers]
        self.head = [chunk.weight.t() for chunk in model.lm_head.head_chunks]  # (C, V_j) views, contiguous once fused
        self._kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._base = -1  # the cache length the remembered branches continue

    def forget(self) -> None:
        """The cache changed (prefill or trim): remembered branches no longer continue it."""
        self._kv.clear()
        self._base = -1

    @torch.inference_mode()
    def logits(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits (N, V) after each of N equally long continuations of the cached context."""
        length, steps = self.cache.length, len(sequences[0])
        self.cache.key_length(steps)  # refuses branches past the capacity
        if self._base != length or len(self._kv) > _MAX_REMEMBERED:
            self.forget()
            self._base = length
        keys = [tuple(s) for s in sequences]
        parents = [self._kv.get(k[:-1]) for k in keys] if steps > 1 else []
        found = [p for p in parents if p is not None]
        own: list[tuple[torch.Tensor, torch.Tensor] | None]
        if parents and len(found) == len(parents):
            new = [k[-1:] for k in keys]  # one token each, on top of the parent's keys and values
            own = [
                (torch.stack([p[i][0] for p in found]), torch.stack([p[i][1] for p in found]))
                for i in range(len(self.layers))
            ]
        else:
            new, own = keys, [None] * len(self.layers)
        hidden, kv = self._forward(torch.tensor(new, dtype=torch.long), own, first=steps - len(new[0]))
        for row, key in enumerate(keys):
            self._kv[key] = [(k[row], v[row]) for k, v in kv]
        final = self.model.final_norm
        last = F.layer_norm(hidden[:, -1], (self.hidden,), final.weight.view(-1), final.bias.view(-1), final.eps)
        return torch.cat([last @ chunk for chunk in self.head], dim=1).float().numpy()

    @torch.inference_mode()
    def adopt(self, tokens: Sequence[int]) -> bool:
        """Append a remembered branch's keys and values to the cache, as if `tokens` had been prefilled;
        False (the cache untouched) when that branch is not remembered."""
        kv = self._kv.get(tuple(tokens)) if self._base == self.cache.length else None
        if kv is None:
            return False
        start, end = self.cache.length, self.cache.length + len(tokens)
        self.cache.reserve(end)
        for i, (k, v) in enumerate(kv):
            self.cache.keys[i][0, :, 0, start:end] = k.T
            self.cache.values[i][0, :, 0, start:end] = v.T
        self.cache.advance(len(tokens))
        self.forget()
        return True

    def _forward(self, ids: torch.Tensor, own: list, first: int) -> tuple[torch.Tensor, list]:
        """ids (N, S): tokens at positions length + first ..; own: per layer, the rows' earlier branch keys
        and values (N, first, C) or None. Returns hidden states (N, S, C) before the final norm and, per
        layer, every branch token's keys and values (N, first + S, C)."""
        rows, steps = ids.shape
        length, heads, hidden = self.cache.length, self.heads, self.hidden
        head_dim = hidden // heads
        start = length + first
        x = (self.model.embed_tokens(ids) + self.model.pos_embed.weight[start : start + steps]).view(-1, hidden)
        # Query i of a row sees its own branch tokens up to first + i (the context cache entirely).
        own_len = first + steps
        blocked = torch.arange(own_len)[None, :] > (torch.arange(steps) + first)[:, None]
        mask = torch.zeros(steps, own_len, dtype=x.dtype).masked_fill_(blocked, float("-inf"))
        kept = []
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (hidden,), layer.norm1_w, layer.norm1_b, layer.eps)
            qkv = torch.addmm(layer.qkv_b, h, layer.qkv_w).view(rows, steps, 3, hidden)
            q, k, v = (qkv[:, :, j] for j in range(3))  # (N, S, C)
            if own[i] is not None:
                k, v = torch.cat([own[i][0], k], dim=1), torch.cat([own[i][1], v], dim=1)
            kept.append((k, v))
            q = q * layer.scale
            context_k = self.cache.keys[i][0, :, 0, :length].view(heads, head_dim, length)
            context_v = self.cache.values[i][0, :, 0, :length].view(heads, head_dim, length)
            q_heads = q.reshape(rows * steps, heads, head_dim).transpose(0, 1)  # (H, N*S, d)
            scores_context = torch.bmm(q_heads, context_k).view(heads, rows, steps, length)
            q4, k4, v4 = (t.reshape(rows, -1, heads, head_dim) for t in (q, k, v))
            scores_own = torch.einsum("nihd,njhd->hnij", q4, k4) + mask
            weights = torch.cat([scores_context, scores_own], dim=3).softmax(dim=3)  # one softmax over both
            out = torch.bmm(weights[..., :length].reshape(heads, rows * steps, length), context_v.transpose(1, 2))
            out = out.view(heads, rows, steps, head_dim) + torch.einsum("hnij,njhd->hnid", weights[..., length:], v4)
            x = x + torch.addmm(layer.out_b, out.permute(1, 2, 0, 3).reshape(rows * steps, hidden), layer.out_w)
            h = F.layer_norm(x, (hidden,), layer.norm2_w, layer.norm2_b, layer.eps)
            x = x + torch.addmm(layer.fc2_b, layer.act(torch.addmm(layer.fc1_b, h, layer.fc1_w)), layer.fc2_w)
        return x.view(rows, steps, hidden), kept


def _pack_qkv(attention) -> torch.Tensor:
    """q, k and v's (C, C) matrices side by side in one (C, 3C) buffer, returned; each conv's weight becomes a
    view of its third, so that the weights are not stored twice and the model's own forward reads the same
    values."""
    convs = (attention.q, attention.k, attention.v)
    packed = torch.cat([conv.weight.data[:, :, 0, 0].t() for conv in convs], dim=1)
    width = convs[0].out_channels
    for j, conv in enumerate(convs):
        conv.weight.data = packed[:, j * width : (j + 1) * width].t()[:, :, None, None]
    return packed


def _t(conv: torch.nn.Conv2d) -> torch.Tensor:
    """A fused 1x1 conv's weight as the (C_in, C_out) matrix it multiplies by (a view, no copy)."""
    return conv.weight[:, :, 0, 0].t()


class _LayerWeights:
    def __init__(self, block):
        attn, mlp = block.attn, block.mlp
        self.eps = block.attn_norm.eps
        self.norm1_w, self.norm1_b = block.attn_norm.weight.view(-1), block.attn_norm.bias.view(-1)
        self.norm2_w, self.norm2_b = block.mlp_norm.weight.view(-1), block.mlp_norm.bias.view(-1)
        self.qkv_w = _pack_qkv(attn)  # (C, 3C): one product for all three
        self.qkv_b = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])
        self.scale = attn.scale
        self.out_w, self.out_b = _t(attn.o), attn.o.bias
        self.fc1_w, self.fc1_b, self.fc2_w, self.fc2_b = _t(mlp.fc1), mlp.fc1.bias, _t(mlp.fc2), mlp.fc2.bias
        self.act = mlp.act
