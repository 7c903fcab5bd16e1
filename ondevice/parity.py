"""How we compare a backend with the reference, and the bounds each precision must meet.

Max-abs error is taken relative to the reference's scale (its largest magnitude), so one bound
serves logits of size 10 and normalised embeddings of size 0.1 alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rel_max_abs: float
    cosine: float


TOLERANCES = {
    # fp32: both sides compute in fp32; differences are summation order only (~1e-7 relative).
    "fp32": Tolerance(rel_max_abs=1e-4, cosine=0.99999),
    # fp16: every op rounds to 11 significant bits (unit roundoff 4.9e-4); through a dozen residual
    # layers and a vocabulary projection, errors of several roundoffs relative to the output's
    # scale are expected. 2e-2 bounds the worst element; cosine >= 0.999 is the bound Core ML fp16
    # conversions are held to as well.
    "fp16": Tolerance(rel_max_abs=2e-2, cosine=0.999),
}


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs: float
    scale: float
    cosine: float

    @property
    def rel_max_abs(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs

    def within(self, tol: Tolerance) -> bool:
        return self.rel_max_abs <= tol.rel_max_abs and self.cosine >= tol.cosine


def compare(name: str, ours: np.ndarray, reference: np.ndarray) -> Comparison:
    if ours.shape != reference.shape:
        raise ValueError(f"{name}: shape {ours.shape} differs from the reference's {reference.shape}")
    a = ours.astype(np.float64).ravel()
    b = reference.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom else float(np.array_equal(a, b))
    return Comparison(name, float(np.max(np.abs(a - b))), float(np.max(np.abs(b))), cosine)
