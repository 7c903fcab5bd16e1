"""The test checkpoints of every registered family, in one place: for each concern a shared runner covers
(parity on torch-ane and on MLX, Core ML packages, MLX exports), the shapes that break naive implementations of
each family. A family registered without an entry here gets one default case, its own random checkpoint, so the
shared runners (tests/test_parity_torch_ane.py, test_parity_mlx.py, test_coreml_packages.py, test_mlx_export.py,
test_keyboard_families.py) cover a new family with no new test file; its entry here then adds the shapes that are
hard for it.

Each case is made by the family's own factory (`Family.random_checkpoint`, `convert/random_checkpoints.py`) with
the case's overrides, once per session (`make`).

`ONDEVICE_TEST_REGISTER=module:function` calls that function (which registers a family) before anything here is
listed: tests/test_registry.py runs the shared runners so on a toy family added through the registry alone."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from convert.registry import FAMILIES, Family, load_part

if os.environ.get("ONDEVICE_TEST_REGISTER"):
    load_part(os.environ["ONDEVICE_TEST_REGISTER"])()

LLAMA3_ROPE_16 = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=16)  # fmt: skip
LLAMA3_ROPE_32 = {**LLAMA3_ROPE_16, "original_max_position_embeddings": 32}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    name: str
    overrides: Mapping = dataclasses.field(default_factory=dict)  # keyword arguments of the family's factory
    seed: int = 0
    # Norm weights and biases moved off transformers' ones and zeros after saving (which would hide a misplaced or
    # missing one); every width then a multiple of the MLX quantization group of 32 in the cases that set it.
    randomise_norms: bool = False
    tokenizer: bool = False  # a tiny byte-level tokenizer beside the weights (tests/tiny_tokenizer.py)

    @property
    def id(self) -> str:
        return f"{self.family}: {self.name}"

    @property
    def registry_entry(self) -> Family:
        return FAMILIES[self.family]

    @property
    def is_causal(self) -> bool:
        return self.registry_entry.is_causal


def default_case(family: Family) -> Case:
    return Case(family.name, "its random checkpoint", tokenizer=family.is_causal)


# torch-ane parity (tests/test_parity_torch_ane.py): the ANE-layout model against transformers.
TORCH_ANE = {
    "gpt2": [
        Case("gpt2", "base", seed=1),
        Case("gpt2", "5 heads of width 40, exact gelu, n_inner 300",
             dict(n_head=5, n_embd=200, n_inner=300, activation_function="gelu"), seed=1),
        Case("gpt2", "3 layers, untied head, relu", dict(n_layer=3, tie_word_embeddings=False,
                                                         activation_function="relu"), seed=1),
    ],
    "bert": [
        Case("bert", "bert", seed=2),
        Case("bert", "bert, 5 heads of width 40, pooler", dict(num_attention_heads=5, hidden_size=200, head="pooler"),
             seed=2),
        Case("bert", "distilbert", dict(dialect="distilbert"), seed=2),
        Case("bert", "distilbert, 5 heads of width 40", dict(dialect="distilbert", n_heads=5, dim=200), seed=2),
    ],
    # Defaults of make_llama: 2 layers, width 48, 6 heads of 8 sharing 2 key/value heads (GQA 3:1), untied.
    "llama": [
        Case("llama", "llama, GQA 3:1", seed=3),
        Case("llama", "llama, GQA 7:1, width 56, tied",
             dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=56, tie_word_embeddings=True), seed=3),
        Case("llama", "llama3 rope, original context 16 x8, v4 config",
             dict(rope_parameters=LLAMA3_ROPE_16, config_style="v4"), seed=3),
        Case("llama", "llama, linear rope x4, o/mlp biases, bf16",
             dict(rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=4.0), attention_bias=True,
                  mlp_bias=True, dtype=torch.bfloat16), seed=3),
        Case("llama", "mistral, one kv head, v4 config",
             dict(dialect="mistral", num_key_value_heads=1, config_style="v4"), seed=3),
        Case("llama", "mistral, 4 heads = 4 kv heads",
             dict(dialect="mistral", num_attention_heads=4, num_key_value_heads=4), seed=3),
        Case("llama", "qwen2, biases, tied", dict(dialect="qwen2", tie_word_embeddings=True), seed=3),
        Case("llama", "qwen2, bf16, v4 config", dict(dialect="qwen2", dtype=torch.bfloat16, config_style="v4"),
             seed=3),
        Case("llama", "qwen3, head_dim 16 of width 48, 4 heads / 2 kv",
             dict(dialect="qwen3", head_dim=16, num_attention_heads=4, num_key_value_heads=2), seed=3),
        Case("llama", "qwen3, 16 heads / 8 kv, tied",
             dict(dialect="qwen3", num_attention_heads=16, num_key_value_heads=8, head_dim=8, hidden_size=64,
                  tie_word_embeddings=True), seed=3),
    ],
    # Defaults of make_gemma3: Gemma 3 270M's structure reduced (7 layers of width 64, 4 heads of 256 sharing one
    # key/value head, layers 0-4 and 6 sliding over a window of 16, layer 5 global, tied). Every prompt of the "long"
    # cases (150 tokens) and the 40-token decode run far past the window, so local and global layers both matter.
    "gemma3": [
        Case("gemma3", "270M-shaped, window 16", seed=5, randomise_norms=True),
        Case("gemma3", "1B-shaped, width 96, 8 layers, window 8, v4 config",
             dict(num_hidden_layers=8, hidden_size=96, intermediate_size=192, sliding_window=8, config_style="v4"),
             seed=5, randomise_norms=True),
        Case("gemma3", "untied, biases, linear rope x4 on global layers, 40,000 tokens (3 head chunks), bf16",
             dict(tie_word_embeddings=False, attention_bias=True, vocab_size=40000, dtype=torch.bfloat16,
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                   "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0}}),
             seed=5),
    ],
}  # fmt: skip

# MLX parity (tests/test_parity_mlx.py). MLX's CPU matmul is ~25x slower than torch's here: the models stay small.
MLX = {
    "gpt2": [
        Case("gpt2", "base"),
        Case("gpt2", "5 heads of width 40, 128 positions", dict(n_head=5, n_embd=200, n_positions=128), seed=1),
    ],
    "bert": [
        Case("bert", "bert"),
        Case("bert", "bert, 5 heads of width 40, pooler, 1 layer",
             dict(head="pooler", num_attention_heads=5, hidden_size=200, intermediate_size=136, num_hidden_layers=1),
             seed=2),
        Case("bert", "distilbert", dict(dialect="distilbert")),
    ],
    # Widths (C, H*D, G*D, F) multiples of 32, so that every layer really is quantized; norms and biases randomised.
    "llama": [
        # GQA 3:1, head_dim 16 = C/H, untied, default RoPE
        Case("llama", "llama, GQA 3:1", dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                             head_dim=16, intermediate_size=64), seed=7, randomise_norms=True),
        # GQA 7:1: 7 heads of 32 sharing one KV head, tied, biases on q/k/v/o and the MLP, and llama3 RoPE from an
        # original context of 32: with D=32 its wavelengths (6.3, 11, 20, 35, ...) fall in all three bands. Init std
        # 0.1: at width 224, 0.2 makes a model so sharp that its reduced-precision figures say more about the random
        # init than about MLX.
        Case("llama", "llama3 rope, GQA 7:1, tied, biases",
             dict(hidden_size=224, num_attention_heads=7, num_key_value_heads=1, head_dim=32, intermediate_size=96,
                  initializer_range=0.1, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                  rope_parameters=LLAMA3_ROPE_32), seed=7, randomise_norms=True),
        # plain multi-head attention (4 heads of 16, each its own KV head), theta 1e6
        Case("llama", "mistral, 4 heads = 4 kv heads, theta 1e6",
             dict(dialect="mistral", hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                  intermediate_size=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
             seed=7, randomise_norms=True),
        # q/k/v biases without an o bias, tied
        Case("llama", "qwen2, biases, tied", dict(dialect="qwen2", hidden_size=64, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=64,
                                                  tie_word_embeddings=True), seed=7, randomise_norms=True),
        # q/k norm, head_dim 32 != C/H (H*D = 128, C = 64), linear RoPE scaling
        Case("llama", "qwen3, q/k norm, head_dim 32, linear rope",
             dict(dialect="qwen3", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  intermediate_size=64, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
             seed=7, randomise_norms=True),
    ],
    # Gemma 3's shapes as in TORCH_ANE (every width a multiple of 32): 270M- and 1B-shaped, the second with a linear
    # RoPE scaling of its global layers and a v4 config.
    "gemma3": [
        Case("gemma3", "270M-shaped, window 16", seed=7, randomise_norms=True),
        Case("gemma3", "1B-shaped, width 96, window 8, linear rope x4 on global layers, v4 config",
             dict(num_hidden_layers=8, hidden_size=96, intermediate_size=192, sliding_window=8, config_style="v4",
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                   "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0}}),
             seed=7, randomise_norms=True),
    ],
}  # fmt: skip

# MLX exports read by mlx-lm (tests/test_mlx_export.py): a tokenizer beside the weights (mlx_lm.load needs one).
MLX_EXPORT = {
    "gpt2": [Case("gpt2", "base", tokenizer=True)],
    "bert": [Case("bert", "bert")],
    "llama": [
        Case("llama", "llama, GQA 2:1", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=16, intermediate_size=64),
             seed=3, randomise_norms=True, tokenizer=True),
        Case("llama", "llama3 rope, tied, head_dim 32",
             dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=96,
                  tie_word_embeddings=True, initializer_range=0.1, rope_parameters=LLAMA3_ROPE_32),
             seed=3, randomise_norms=True, tokenizer=True),
        Case("llama", "mistral, 4 kv heads, theta 1e6",
             dict(dialect="mistral", hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                  intermediate_size=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
             seed=3, randomise_norms=True, tokenizer=True),
        Case("llama", "qwen2, biases, tied", dict(dialect="qwen2", hidden_size=64, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=64,
                                                  tie_word_embeddings=True), seed=3, randomise_norms=True,
             tokenizer=True),
        Case("llama", "qwen3, q/k norm", dict(dialect="qwen3", hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=32, intermediate_size=64),
             seed=3, randomise_norms=True, tokenizer=True),
    ],
    # 270M-shaped (width 64: mlx-lm's bfloat16 embedding scale, 8, is exact) and 1B-shaped with a linear RoPE
    # scaling of the global layers (width 96 would round sqrt(96) differently in mlx-lm: 64 again, 8 layers).
    "gemma3": [
        Case("gemma3", "270M-shaped, window 16", seed=3, randomise_norms=True, tokenizer=True),
        Case("gemma3", "8 layers, window 8, linear rope x4 on global layers, v4 config",
             dict(num_hidden_layers=8, sliding_window=8, config_style="v4",
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                   "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0}}),
             seed=3, randomise_norms=True, tokenizer=True),
    ],
}  # fmt: skip

# Reduced MLX formats measured on each family's MLX cases, where they are sharper than the checkpoints
# parity.TOLERANCES was measured on (a family without an entry is held to those): (dtype, bits) -> (rel_max_abs <=,
# cosine >=, teacher-forced top-1 agreement >=). Measured on mlx 0.32.4 CPU (the worst of the family's cases; rel =
# max-abs error / reference scale; 150 random ids, 118 for GPT-2's 128 positions; weights quantized in groups of 32,
# fp32 activations; measured 2026-12-04 by running each format over `cases(MLX)`):
#          fp16                    bf16                    q8                      q4
#   gpt2   9.7e-3 .999991 1.000    6.0e-2 .99948 0.966     2.8e-2 .99980 0.940     0.37 .947 0.593
#   llama  1.4e-2 .999983 0.973    6.5e-2 .99928 0.940     9.4e-2 .99886 0.920     1.09 .788 0.227
# Bounds: about 2x the worst in rel and in (1 - cos), top-1 a few points below the worst; GPT-2's fp16 bound is the
# shared fp16 tolerance. These random models are much sharper than trained ones, so 4-bit weights (15 steps per
# group) move their logits a lot: the q4 bound says only "the same function, far better than chance", and the
# quantized-kernel test shows the loss is the rounding of the weights, not our code.
MLX_REDUCED_BOUNDS = {
    "gpt2": {("fp16", None): (2e-2, 0.999, 0.98), ("bf16", None): (0.12, 0.999, 0.93),
             ("fp32", 8): (8e-2, 0.999, 0.90), ("fp32", 4): (0.9, 0.85, 0.35)},
    "llama": {("fp16", None): (3e-2, 0.99995, 0.93), ("bf16", None): (0.13, 0.9985, 0.88),
              ("fp32", 8): (0.19, 0.9975, 0.85), ("fp32", 4): (2.0, 0.55, 0.12)},
}  # fmt: skip
REDUCED_FORMATS = (("fp16", None), ("bf16", None), ("fp32", 8), ("fp32", 4))


def cases(table: dict[str, list[Case]], causal: bool | None = None, needs: str | None = None) -> list[Case]:
    """The cases of `table` for every registered family (its default case where the table has none), those of
    causal LMs or encoders only if `causal` says so, of families that have the part `needs` (mlx_model, ...)."""
    found = []
    for family in FAMILIES.values():
        if causal is not None and family.is_causal != causal:
            continue
        if needs is not None and getattr(family, needs) is None:
            continue
        found += table.get(family.name) or [default_case(family)]
    return found


def ids(found: list[Case]) -> list[str]:
    return [case.id for case in found]


_MADE: dict[tuple[str, str], Path] = {}


def make(case: Case, root: Path) -> Path:
    """The case's checkpoint, made once per session under `root` (a session-wide folder)."""
    key = (repr(case), str(root))
    if key not in _MADE:
        directory = root / re.sub(r"[^A-Za-z0-9]+", "-", case.id).strip("-")
        if not (directory / "config.json").is_file():
            case.registry_entry.make_random_checkpoint(directory, seed=case.seed, **case.overrides)
            if case.randomise_norms:
                randomise_norms_and_biases(directory, seed=case.seed + 1)
            if case.tokenizer:
                from convert.hf_common import read_config_json
                from tests.tiny_tokenizer import write_tokenizer

                write_tokenizer(directory, read_config_json(directory)["vocab_size"])
        _MADE[key] = directory
    return _MADE[key]


def randomise_norms_and_biases(directory: Path, seed: int) -> None:
    """Norm weights and biases are saved as transformers initialises them (ones and zeros), which would hide a
    misplaced or missing one: move each by 0.3 x N(0, 1)."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if "norm" in name or name.endswith(".bias"):
            tensors[name] = tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, path, metadata={"format": "pt"})
