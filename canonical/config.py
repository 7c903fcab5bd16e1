"""What every canonical config offers the rest of the code, whatever its family, and how a config is
written into (and read back from) the JSON that converted packages and MLX directories carry.

Each family's config is a frozen dataclass in its own module of this package (`canonical/gpt2.py`,
...), with the class variables `family` and `is_causal` and the attention geometry below. Code that
must branch asks `is_causal` or the family registry (`convert/registry.py`), never a config class."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, cast, runtime_checkable

from canonical.attention import AttentionShape
from canonical.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]


@runtime_checkable
class ModelConfig(Protocol):
    family: ClassVar[str]  # the registry's name of the family: gpt2, bert, llama
    is_causal: ClassVar[bool]  # a causal LM (prefill, decode, KV cache) or an encoder
    positions_field: ClassVar[str]  # config.json's name for max_positions, for error messages

    # Read-only (properties here) so that frozen dataclasses, whose fields cannot be set, satisfy the protocol.
    @property
    def vocab_size(self) -> int: ...

    @property
    def max_positions(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def num_heads(self) -> int: ...

    @property
    def num_kv_heads(self) -> int: ...

    @property
    def attention(self) -> AttentionShape:
        """The attention this config implies, for both backends' `Attention`."""
        ...

    @property
    def head_dim(self) -> int: ...

    @property
    def kv_width(self) -> int:
        """Channels of one layer's keys (and values) in a KV cache: num_kv_heads * head_dim."""
        ...


@dataclasses.dataclass(frozen=True)
class EqualHeads:
    """The shape fields of configs whose keys and values have as many heads as the queries (GPT-2, BERT), and the
    attention geometry that follows from them. A family's config dataclass extends it with its own fields."""

    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention(self) -> AttentionShape:
        return AttentionShape.multi_head(self.hidden_size, self.num_heads)


def check_positions(config: ModelConfig, end: int) -> None:
    """Refuse a sequence that would end at position `end` past the model's positions, naming the config.json
    field that sets them. (`end` is symbolic while torch.export traces: the export fixes the context instead.)"""
    if isinstance(end, int) and end > config.max_positions:
        raise InputError(f"{end} tokens exceed the model's {config.max_positions} positions ({config.positions_field})")


def check_tokenizer_fits(tokens: int, vocab_size: int, where: object) -> None:
    """Refuse a tokenizer whose ids reach past the model's vocabulary: every id it makes needs an embedding row (a
    model may have more rows than its tokenizer has tokens, never fewer)."""
    if tokens > vocab_size:
        raise InputError(
            f"{where}: the tokenizer has {tokens:,} tokens, more than the model's vocabulary of "
            f"{vocab_size:,} (vocab_size): it is another model's tokenizer"
        )


# Packages and MLX directories of format 1 record the family alone.
_LEGACY_CLASSES = {"gpt2": "canonical.gpt2:GPT2Config", "bert": "canonical.bert:BertConfig"}


# Config classes outside this package that registered families use (convert/registry.py adds them).
_REGISTERED_CLASSES: dict[str, type] = {}


def allow_config_class(cls: type) -> None:
    """Let `config_from_dict` rebuild `cls`, a registered family's config class defined outside `canonical/`."""
    _REGISTERED_CLASSES[f"{cls.__module__}:{cls.__qualname__}"] = cls


def config_to_dict(config: ModelConfig) -> dict:
    """The config's fields plus the family and the module of its class, enough to rebuild it."""
    return {
        "family": config.family,
        "config_class": f"{type(config).__module__}:{type(config).__qualname__}",
        **dataclasses.asdict(cast("DataclassInstance", config)),  # every config class is a dataclass
    }


def config_to_json(config: ModelConfig) -> str:
    return json.dumps(config_to_dict(config))


def config_from_dict(fields: dict, where: str) -> ModelConfig:
    """Rebuild a config written by `config_to_dict`. The class is looked up by its recorded path, but only
    inside this package or among registered families' classes: metadata never makes us import arbitrary code."""
    fields = dict(fields)
    path = fields.pop("config_class", None)
    family = fields.pop("family", None)
    if path is None:  # packages written before the class path was recorded name only the family
        path = _LEGACY_CLASSES.get(family)
    module_name, _, class_name = (path or "").partition(":")
    cls = _REGISTERED_CLASSES.get(path or "")
    if cls is None:
        if not module_name.startswith("canonical.") or not class_name.isidentifier():
            raise CheckpointError(f"{where}: unknown config class {path!r}")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            raise CheckpointError(f"{where}: unknown config class {path!r}") from None
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        config = cls(**{k: _tuple_lists(v) for k, v in fields.items() if k in known})
    except TypeError as exc:
        raise CheckpointError(f"{where}: config does not fit {class_name} ({exc})") from None
    if getattr(cls, "family", None) != family and family is not None:
        raise CheckpointError(f"{where}: config class {path!r} is not of family {family!r}")
    return config


def config_from_json(text: str, where: str) -> ModelConfig:
    try:
        return config_from_dict(json.loads(text), where)
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: unreadable config ({exc})") from None


def _tuple_lists(value):
    """JSON has no tuples; frozen configs keep sequences as tuples so they stay hashable."""
    return tuple(_tuple_lists(v) for v in value) if isinstance(value, list) else value
