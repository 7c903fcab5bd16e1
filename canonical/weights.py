"""Canonical weights that are read when asked for: what a family's reader returns for a model too large to hold
twice. Each name maps to a loader (read from the checkpoint, cast to fp32) and a shape known without reading, so a
model's builder takes one tensor at a time, and a chunked conversion only the tensors of the part it is writing.

Nothing is cached: every `weights[name]` reads again, and the caller decides what to keep. A tensor assigned with
`weights[name] = tensor` replaces the loader (tests perturb weights that way)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TypeVar

import torch

V = TypeVar("V")


class LazyWeights(MutableMapping[str, torch.Tensor]):
    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, shape: tuple[int, ...], load: Callable[[], torch.Tensor]) -> None:
        self._loaders[name], self._shapes[name] = load, tuple(shape)

    def alias(self, name: str, of: str) -> None:
        """`name` reads as `of` (a tied head: the token table)."""
        self._loaders[name], self._shapes[name], self._aliases[name] = self._loaders[of], self._shapes[of], of

    def alias_of(self, name: str) -> str | None:
        return self._aliases.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._loaders[name]()

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self._loaders[name], self._shapes[name] = (lambda: tensor), tuple(tensor.shape)
        self._aliases.pop(name, None)

    def __delitem__(self, name: str) -> None:
        del self._loaders[name], self._shapes[name]
        self._aliases.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def weight_shape(weights: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """A weight's shape, without reading it where the weights are lazy."""
    return weights.shape(name) if isinstance(weights, LazyWeights) else tuple(weights[name].shape)


def weight_numel(weights: Mapping[str, torch.Tensor], name: str) -> int:
    numel = 1
    for size in weight_shape(weights, name):
        numel *= size
    return numel


class Selected(Mapping[str, V]):
    """The weights whose names `keep` accepts, read through from `weights` (nothing copied)."""

    def __init__(self, weights: Mapping[str, V], keep: Callable[[str], bool]):
        self.weights, self.names = weights, [name for name in weights if keep(name)]

    def __getitem__(self, name: str) -> V:
        if name not in self.names:
            raise KeyError(name)
        return self.weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
