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


# The bounds of every format, in one table: what `verify` holds a backend, a package or an export to, and what the
# tests assert. Lossless formats first; then the lossy ones, each set from the worst error measured over the
# test checkpoints that use it (tiny random-init GPT-2, 2 layers, 64 wide, and Llama, 2 layers, 48 wide, GQA 3:1,
# both initializer_range 0.2, an adverse case where every weight matters; MiniLM for palettize6), at seq_len 8, 32
# and 64 with seeds 0-3, with a margin: 1.2x the worst relative error, 1.5x the worst cosine gap to 1. The worst
# measured (relative error; cosine) is beside each; docs/parity.md has the measurements and their commands.
TOLERANCES = {
    # fp32: both sides compute in fp32; differences are summation order only (~1e-7 relative).
    "fp32": Tolerance(rel_max_abs=1e-4, cosine=0.99999),
    # fp16: every op rounds to 11 significant bits (unit roundoff 4.9e-4); through a dozen residual
    # layers and a vocabulary projection, errors of several roundoffs relative to the output's
    # scale are expected. 2e-2 bounds the worst element; cosine >= 0.999 is the bound Core ML fp16
    # conversions are held to as well.
    "fp16": Tolerance(rel_max_abs=2e-2, cosine=0.999),
    # Core ML weight compression (`--compress`), on top of fp16 rounding:
    "int8": Tolerance(rel_max_abs=0.075, cosine=0.999),  # gpt2 0.0424, 0.99953 (io/iOS17 too); llama 0.0611, 0.99935
    # palettize6: gpt2 0.255, 0.99611; llama 0.130, 0.99610; minilm 0.142, 0.99422
    "palettize6": Tolerance(rel_max_abs=0.31, cosine=0.991),
    "int4": Tolerance(rel_max_abs=0.58, cosine=0.93),  # gpt2 0.482, 0.95442; llama 0.181, 0.99231 (tables at int8)
    "palettize4": Tolerance(rel_max_abs=0.68, cosine=0.89),  # gpt2 0.535, 0.94822; llama 0.567, 0.92897 (tables 6-bit)
    # MLX exports in a reduced format (q8/q4 over fp32 and fp16 exports alike):
    "bf16": Tolerance(rel_max_abs=0.066, cosine=0.9995),  # gpt2 0.0214, 0.99989; llama 0.0544, 0.99970
    # q8: gpt2 0.0370, 0.99967; the sharper Llama test checkpoints (randomised norms) up to 0.094, 0.99886 (groups of
    # 32); CLI exports 0.068, 0.99906 (mistral)
    "q8": Tolerance(rel_max_abs=0.12, cosine=0.9983),
    "q4": Tolerance(rel_max_abs=0.68, cosine=0.88),  # gpt2 0.563, 0.92409; llama 0.200, 0.98851
}
LOSSLESS = ("fp32", "fp16")  # formats that must reproduce the reference's greedy tokens exactly


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


def greedy_agreement(
    ours, reference, prompt: list[int], steps: int, resolution=np.float16, tie_margin: float | None = None
) -> GreedyAgreement:
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
