"""A toy family, added through the registry alone (tests/test_registry.py): GPT-2's architecture under a
`model_type` nobody knows, with an ANE-layout model and nothing else (no MLX model, no mlx-lm names, no branch
scorer), exactly what a contributor has half-way through CONTRIBUTING.md's recipe.

`register_toy(with_transformers=True)` also teaches transformers the toy's `model_type` (through its own
`AutoConfig.register` / `AutoModelForCausalLM.register`), so that the transformers reference loads it: then the
shared runners can hold it to the contract. `ONDEVICE_TEST_REGISTER=tests.toy_family:register_toy` makes
tests/families.py call it before it lists its cases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from canonical.gpt2 import GPT2Config
from convert import hf_gpt2, random_checkpoints
from convert.registry import Family, register

MODEL_TYPE = "toy_gpt2"


@dataclasses.dataclass(frozen=True)
class ToyConfig(GPT2Config):
    family: ClassVar[str] = "toy"


class ToyReader:
    """The reader contract (CONTRIBUTING.md): GPT-2's reader, under the toy's config class."""

    @staticmethod
    def read_config(raw: dict, model_type: str, directory: Path) -> ToyConfig:
        return ToyConfig(**dataclasses.asdict(hf_gpt2.read_config(raw, model_type, directory)))

    read_weights = staticmethod(hf_gpt2.read_weights)


def make_toy_checkpoint(directory: Path, seed: int = 0, **overrides) -> Path:
    random_checkpoints.make_gpt2(directory, seed=seed, **overrides)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": MODEL_TYPE}))
    return directory


TOY = Family(
    name="toy", model_types=(MODEL_TYPE,), config_class=ToyConfig, reader=ToyReader,
    random_checkpoint=make_toy_checkpoint, ane_model="ane_model.gpt2:GPT2Model",
)  # fmt: skip


def register_toy(with_transformers: bool = True) -> Family:
    """Register the toy (and, with_transformers, its model_type in transformers' Auto classes)."""
    if with_transformers:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        class ToyHFConfig(transformers.GPT2Config):
            model_type = MODEL_TYPE

        class ToyHFModel(transformers.GPT2LMHeadModel):
            config_class = ToyHFConfig

        AutoConfig.register(MODEL_TYPE, ToyHFConfig, exist_ok=True)
        AutoModelForCausalLM.register(ToyHFConfig, ToyHFModel, exist_ok=True)
    return register(TOY)
