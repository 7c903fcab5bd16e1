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


@dataclass(frozen=True)
class GreedyAgreement:
    steps: int
    agreed: int
    ties: int  # disagreements where the reference's top two logits are closer than `resolution` can tell apart
    clear_misses: int  # disagreements anywhere else: a real error
    miss_margins: tuple[float, ...] = ()  # the reference's top-two logit margin at each disagreement

    def __str__(self) -> str:
        return f"greedy {self.agreed}/{self.steps} (ties {self.ties}, clear misses {self.clear_misses})"


def greedy_agreement(ours, reference, prompt: list[int], steps: int, resolution=np.float16,
                     tie_margin: float | None = None) -> GreedyAgreement:
    """Teacher-forced greedy comparison along the reference's own greedy path.

    Free-running greedy decoding turns one flipped near-tie into a different continuation, so an exact
    token match at reduced precision depends on whether the prompt happens to meet a tie. Here both
    models read the reference's tokens; a step where the argmaxes differ counts as a tie when the
    reference's top-two margin is below the spacing of `resolution` numbers at that magnitude (the two
    logits may round to the same value), and as a clear miss otherwise. Lossy weight compression moves
    logits by more than rounding does: `tie_margin` then states the margin (in logits) below which the
    reference's choice counts as a tie."""
    reference.trim(0)
    ours.trim(0)
    ref_logits, our_logits = reference.prefill(prompt)[-1], ours.prefill(prompt)[-1]
    agreed = ties = 0
    margins: list[float] = []
    for step in range(steps):
        token = int(np.argmax(ref_logits))
        if int(np.argmax(our_logits)) == token:
            agreed += 1
        else:
            second, first = np.partition(ref_logits.astype(np.float64), -2)[-2:]
            tie = float(np.spacing(resolution(abs(first)))) if tie_margin is None else tie_margin
            ties += bool(first - second < tie)
            margins.append(float(first - second))
        if step + 1 < steps:
            ref_logits, our_logits = reference.decode(token), ours.decode(token)
    return GreedyAgreement(steps, agreed, ties, steps - agreed - ties, tuple(margins))
