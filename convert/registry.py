"""The family registry: everything the rest of the code needs to know about a model family, in one entry.

A family is one architecture as this package implements it (GPT-2, the BERT family, the Llama family, Gemma 3),
whatever Hugging Face `model_type` names its checkpoints carry. Code that must treat families differently
asks the registry (or `config.is_causal`), never "is it GPT-2": adding a family is its own files plus one
`register(...)` call below. CONTRIBUTING.md walks through it.

Parts are named by where they live ("module:Name") and imported when first asked for, so that reading a config
imports neither MLX nor a model it does not need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from canonical.bert import BertConfig
from canonical.config import ModelConfig, allow_config_class
from canonical.errors import CheckpointError
from canonical.gemma3 import Gemma3Config
from canonical.gpt2 import GPT2Config
from canonical.llama import LlamaConfig


@dataclass(frozen=True)
class MlxLmNames:
    """How mlx-lm names this family's weights and config, so that `mlx_lm.load` runs our MLX exports: the four
    functions of a `convert/mlx_lm_<family>.py` module."""

    to_mlx_lm: Callable[[dict, ModelConfig], dict]  # canonical weights -> mlx-lm's names
    from_mlx_lm: Callable[[dict, ModelConfig], dict]  # and back
    config: Callable[[ModelConfig, dict], dict]  # (canonical config, source config.json) -> mlx-lm's config.json
    compatible: Callable[[ModelConfig], bool]  # whether mlx-lm's model computes what ours does for this config


# Where a family's part lives: "package.module" or "package.module:Name", imported when first asked for (so that
# reading a config imports neither MLX nor a model it does not need); or the object itself.
Part = str | object


def load_part(part: Part):
    if not isinstance(part, str):
        return part
    module_name, _, attribute = part.partition(":")
    module = import_module(module_name)
    return getattr(module, attribute) if attribute else module


@dataclass(frozen=True)
class Family:
    """One family's parts. The reader is a module offering the reader contract of CONTRIBUTING.md:

    read_config(config_json: dict, model_type: str, directory: Path) -> config
    read_weights(config, raw: RawWeights) -> (config completed from the weights, canonical weights)
    """

    name: str  # the family, as configs record it (`config.family`)
    model_types: tuple[str, ...]  # Hugging Face `model_type` values read as this family
    config_class: type[ModelConfig]
    reader: Part  # the module of read_config and read_weights
    random_checkpoint: Part  # (directory, seed=0, **overrides) -> directory: a small random-init checkpoint
    ane_model: Part | None = None  # the ANE-layout torch model class (torch-ane, Core ML)
    mlx_model: Part | None = None  # the MLX model class
    mlx_lm: Part | None = None  # the module of mlx-lm's names (to_mlx_lm, from_mlx_lm, mlx_lm_config, ...)
    cpu_branch_scorer: Part | None = None  # a batched branch scorer for the keyboard on the CPU

    @property
    def is_causal(self) -> bool:
        return self.config_class.is_causal

    def read_config(self, raw: dict, model_type: str, directory: Path) -> ModelConfig:
        return load_part(self.reader).read_config(raw, model_type, directory)

    def read_weights(self, config: ModelConfig, raw) -> tuple[ModelConfig, dict]:
        return load_part(self.reader).read_weights(config, raw)

    def make_random_checkpoint(self, directory: Path, **overrides) -> Path:
        return load_part(self.random_checkpoint)(directory, **overrides)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; its model_types must not be claimed by another family."""
    for other in FAMILIES.values():
        taken = set(other.model_types) & set(family.model_types)
        if other.name != family.name and taken:
            raise ValueError(f"model_type {sorted(taken)} already belongs to family {other.name!r}")
    FAMILIES[family.name] = family
    allow_config_class(family.config_class)  # packages and MLX directories of this family can be read back
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES.values() for t in family.model_types]


def family_for_model_type(model_type: object, where: Path | str) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise CheckpointError(
        f"{where}: model_type {model_type!r} is not supported (supported: {', '.join(supported_model_types())})"
    )


def family_of(config: ModelConfig) -> Family:
    family = FAMILIES.get(config.family)
    if family is None:
        raise CheckpointError(f"family {config.family!r} is not registered")
    return family


def mlx_lm_of(config: ModelConfig) -> MlxLmNames | None:
    """mlx-lm's names for the config's family, or None where mlx-lm does not have the family."""
    part = family_of(config).mlx_lm
    if part is None:
        return None
    module = load_part(part)
    return MlxLmNames(module.to_mlx_lm, module.from_mlx_lm, module.mlx_lm_config, module.mlx_lm_compatible)


def optional_part(family: Family, part: str):
    """The family's `part` (cpu_branch_scorer, ...), loaded, or None where the family has none."""
    spec = getattr(family, part)
    return None if spec is None else load_part(spec)


def require(family: Family, part: str, purpose: str):
    """The family's `part` (ane_model, mlx_model, ...), loaded, or a one-line refusal naming what is missing."""
    spec = getattr(family, part)
    if spec is None:
        raise CheckpointError(f"the {family.name} family has no {part.replace('_', ' ')}: {purpose} is not available")
    return load_part(spec)


register(
    Family(
        name="gpt2",
        model_types=("gpt2",),
        config_class=GPT2Config,
        reader="convert.hf_gpt2",
        random_checkpoint="convert.random_checkpoints:make_gpt2",
        ane_model="ane_model.gpt2:GPT2Model",
        mlx_model="mlx_model.gpt2:GPT2Model",
        mlx_lm="convert.mlx_lm_gpt2",
        cpu_branch_scorer="ane_model.gpt2_branches:GPT2Branches",
    )
)
register(
    Family(
        name="bert",
        model_types=("bert", "distilbert"),
        config_class=BertConfig,
        reader="convert.hf_bert",
        random_checkpoint="convert.random_checkpoints:make_bert",
        ane_model="ane_model.bert:BertModel",
        mlx_model="mlx_model.bert:BertModel",
    )
)
register(
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        config_class=LlamaConfig,
        reader="convert.hf_llama",
        random_checkpoint="convert.random_checkpoints:make_llama",
        ane_model="ane_model.llama:LlamaModel",
        mlx_model="mlx_model.llama:LlamaModel",
        mlx_lm="convert.mlx_lm_llama",
    )
)
register(
    Family(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        config_class=Gemma3Config,
        reader="convert.hf_gemma3",
        random_checkpoint="convert.random_checkpoints:make_gemma3",
        ane_model="ane_model.gemma3:Gemma3Model",
        mlx_model="mlx_model.gemma3:Gemma3Model",
        mlx_lm="convert.mlx_lm_gemma3",
    )
)


def build_ane_model(config: ModelConfig, weights: dict):
    """The family's ANE-layout torch model filled with canonical weights (in eval mode)."""
    family = family_of(config)
    model_cls = require(family, "ane_model", "the torch-ane backend and Core ML conversion")
    return model_cls.from_canonical(config, weights)


def unloaded_ane_model(config: ModelConfig):
    """The family's ANE-layout torch model without its weights (`CausalLM.unloaded`): a chunked conversion loads one
    part's at a time."""
    family = family_of(config)
    model_cls = require(family, "ane_model", "the torch-ane backend and Core ML conversion")
    return model_cls.unloaded(config)


def build_mlx_model(
    config: ModelConfig, weights: dict, dtype=None, bits: int | None = None, group_size: int = 64, packed: bool = False
):
    """The family's MLX model (weights cast to `dtype`, fp32 by default; quantized to `bits` in groups of
    `group_size`, or already quantized when `packed`)."""
    import mlx.core as mx

    family = family_of(config)
    model_cls = require(family, "mlx_model", "the mlx backend and MLX export")
    return model_cls.from_canonical(config, weights, dtype or mx.float32, bits, group_size, packed)
