"""The family registry: everything the rest of the code needs to know about a model family, in one entry.

A family is one architecture as this package implements it (GPT-2, the BERT family, the Llama family),
whatever Hugging Face `model_type` names its checkpoints carry. Code that must treat families differently
asks the registry (or `config.is_causal`), never "is it GPT-2": adding a family is its own files plus one
`register(...)` call below. CONTRIBUTING.md walks through it.

The models are referenced lazily (a function that imports them), so that reading a config imports
neither MLX nor a model it does not need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from canonical.bert import BertConfig
from canonical.config import ModelConfig, allow_config_class
from canonical.errors import CheckpointError
from canonical.gpt2 import GPT2Config
from canonical.llama import LlamaConfig

ReadConfig = Callable[[dict, str, Path], ModelConfig]  # (config.json, model_type, directory) -> canonical config
# (config, RawWeights) -> the config completed from the weights (e.g. which heads exist), canonical weights
ReadWeights = Callable[[ModelConfig, object], tuple[ModelConfig, dict]]


@dataclass(frozen=True)
class MlxLmNames:
    """How mlx-lm names this family's weights and config, so that `mlx_lm.load` runs our MLX exports: the four
    functions of a `convert/mlx_lm_<family>.py` module (`mlx_lm_names` reads them off it)."""

    to_mlx_lm: Callable[[dict, ModelConfig], dict]  # canonical weights -> mlx-lm's names
    from_mlx_lm: Callable[[dict, ModelConfig], dict]  # and back
    config: Callable[[ModelConfig, dict], dict]  # (canonical config, source config.json) -> mlx-lm's config.json
    compatible: Callable[[ModelConfig], bool]  # whether mlx-lm's model computes what ours does for this config


@dataclass(frozen=True)
class Family:
    name: str  # the family, as configs record it (`config.family`)
    model_types: tuple[str, ...]  # Hugging Face `model_type` values read as this family
    config_class: type
    read_config: ReadConfig
    read_weights: ReadWeights
    random_checkpoint: Callable[[Path], Path]  # a small random-init checkpoint of this family (tests, examples)
    ane_model: Callable[[], type] | None = None  # the ANE-layout torch model class (torch-ane, Core ML)
    mlx_model: Callable[[], type] | None = None  # the MLX model class
    mlx_lm: Callable[[], MlxLmNames] | None = None  # mlx-lm's names, where mlx-lm has the family
    cpu_branch_scorer: Callable[[], type] | None = None  # a batched branch scorer for the keyboard on the CPU

    @property
    def is_causal(self) -> bool:
        return self.config_class.is_causal


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
    raise CheckpointError(f"{where}: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(supported_model_types())})")


def family_of(config: ModelConfig) -> Family:
    family = FAMILIES.get(config.family)
    if family is None:
        raise CheckpointError(f"family {config.family!r} is not registered")
    return family


def mlx_lm_names(module) -> MlxLmNames:
    """The `MlxLmNames` of a module that defines `to_mlx_lm`, `from_mlx_lm`, `mlx_lm_config`, `mlx_lm_compatible`."""
    return MlxLmNames(module.to_mlx_lm, module.from_mlx_lm, module.mlx_lm_config, module.mlx_lm_compatible)


def mlx_lm_of(config: ModelConfig) -> MlxLmNames | None:
    """mlx-lm's names for the config's family, or None where mlx-lm does not have the family."""
    loader = family_of(config).mlx_lm
    return None if loader is None else loader()


def require(family: Family, part: str, purpose: str) -> Callable[[], type]:
    """The family's `part` (ane_model, mlx_model, ...) or a one-line refusal naming what is missing."""
    loader = getattr(family, part)
    if loader is None:
        raise CheckpointError(f"the {family.name} family has no {part.replace('_', ' ')}: {purpose} is not available")
    return loader


def _gpt2() -> Family:
    from convert import hf_gpt2, random_checkpoints

    return Family(
        name="gpt2", model_types=("gpt2",), config_class=GPT2Config,
        read_config=lambda raw, _type, _dir: hf_gpt2.gpt2_config(raw),
        read_weights=lambda cfg, raw: (cfg, hf_gpt2.gpt2_weights(cfg, raw)),
        random_checkpoint=random_checkpoints.make_gpt2,
        ane_model=lambda: import_module("ane_model.gpt2").GPT2Model,
        mlx_model=lambda: import_module("mlx_model.gpt2").GPT2Model,
        mlx_lm=lambda: mlx_lm_names(import_module("convert.mlx_lm_gpt2")),
        cpu_branch_scorer=lambda: import_module("ane_model.gpt2_branches").GPT2Branches,
    )


def _bert() -> Family:
    from convert import hf_bert, random_checkpoints

    return Family(
        name="bert", model_types=("bert", "distilbert"), config_class=BertConfig,
        read_config=hf_bert.bert_config, read_weights=hf_bert.bert_weights,
        random_checkpoint=random_checkpoints.make_bert,
        ane_model=lambda: import_module("ane_model.bert").BertModel,
        mlx_model=lambda: import_module("mlx_model.bert").BertModel,
    )


def _llama() -> Family:
    from convert import hf_llama, random_checkpoints

    return Family(
        name="llama", model_types=("llama", "mistral", "qwen2", "qwen3"), config_class=LlamaConfig,
        read_config=hf_llama.llama_config,
        read_weights=lambda cfg, raw: (cfg, hf_llama.llama_weights(cfg, raw)),
        random_checkpoint=random_checkpoints.make_llama,
        ane_model=lambda: import_module("ane_model.llama").LlamaModel,
        mlx_model=lambda: import_module("mlx_model.llama").LlamaModel,
        mlx_lm=lambda: mlx_lm_names(import_module("convert.mlx_lm_llama")),
    )


for _make in (_gpt2, _bert, _llama):
    register(_make())


def build_ane_model(config: ModelConfig, weights: dict):
    """The family's ANE-layout torch model filled with canonical weights (in eval mode)."""
    family = family_of(config)
    model_cls = require(family, "ane_model", "the torch-ane backend and Core ML conversion")()
    return model_cls.from_canonical(config, weights)


def build_mlx_model(config: ModelConfig, weights: dict, dtype=None, bits: int | None = None, group_size: int = 64,
                    packed: bool = False):
    """The family's MLX model (weights cast to `dtype`, fp32 by default; quantized to `bits` in groups of
    `group_size`, or already quantized when `packed`)."""
    import mlx.core as mx

    family = family_of(config)
    model_cls = require(family, "mlx_model", "the mlx backend and MLX export")()
    return model_cls.from_canonical(config, weights, dtype or mx.float32, bits, group_size, packed)
