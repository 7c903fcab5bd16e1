"""BERT-family checkpoints in Hugging Face layout -> `BertConfig` + canonical weights.

Two dialects share one canonical form: BERT (`bert.` prefix in task models, separate query/key/value,
token-type embeddings, optional pooler, `cls.predictions` MLM head) and DistilBERT (`distilbert.`
prefix, `q_lin`/`k_lin`/..., no token types, `vocab_*` MLM head). sentence-transformers checkpoints
are plain BERT weights plus `modules.json`, whose pooling and normalisation are read here too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from canonical.bert import BertConfig, Pooling
from canonical.errors import CheckpointError
from convert.activations import canonical_activation
from convert.hf_common import CheckpointTensors, check_heads, config_int, norm_eps, token_id
from convert.weights import RawWeights

# Heads of task checkpoints that our encoder does not use, and buffers that are not weights.
_IGNORED = (
    r"embeddings\.position_ids",
    r"cls\.seq_relationship\..*",
    r"(pre_)?classifier\..*",
    r"qa_outputs\..*",
)

# Per dialect: our canonical name -> Hugging Face name, with "{i}" for the layer index.
_BERT_NAMES = {
    "tok_embed": "embeddings.word_embeddings",
    "pos_embed": "embeddings.position_embeddings",
    "type_embed": "embeddings.token_type_embeddings",
    "embed_norm": "embeddings.LayerNorm",
    "layers.{i}.attn.q": "encoder.layer.{i}.attention.self.query",
    "layers.{i}.attn.k": "encoder.layer.{i}.attention.self.key",
    "layers.{i}.attn.v": "encoder.layer.{i}.attention.self.value",
    "layers.{i}.attn.o": "encoder.layer.{i}.attention.output.dense",
    "layers.{i}.attn_norm": "encoder.layer.{i}.attention.output.LayerNorm",
    "layers.{i}.mlp.fc1": "encoder.layer.{i}.intermediate.dense",
    "layers.{i}.mlp.fc2": "encoder.layer.{i}.output.dense",
    "layers.{i}.mlp_norm": "encoder.layer.{i}.output.LayerNorm",
    "pooler": "pooler.dense",
    "mlm.dense": "cls.predictions.transform.dense",
    "mlm.norm": "cls.predictions.transform.LayerNorm",
    "mlm.decoder.weight": "cls.predictions.decoder.weight",
    "mlm.decoder.bias": "cls.predictions.bias",
}
_DISTILBERT_NAMES = {
    "tok_embed": "embeddings.word_embeddings",
    "pos_embed": "embeddings.position_embeddings",
    "embed_norm": "embeddings.LayerNorm",
    "layers.{i}.attn.q": "transformer.layer.{i}.attention.q_lin",
    "layers.{i}.attn.k": "transformer.layer.{i}.attention.k_lin",
    "layers.{i}.attn.v": "transformer.layer.{i}.attention.v_lin",
    "layers.{i}.attn.o": "transformer.layer.{i}.attention.out_lin",
    "layers.{i}.attn_norm": "transformer.layer.{i}.sa_layer_norm",
    "layers.{i}.mlp.fc1": "transformer.layer.{i}.ffn.lin1",
    "layers.{i}.mlp.fc2": "transformer.layer.{i}.ffn.lin2",
    "layers.{i}.mlp_norm": "transformer.layer.{i}.output_layer_norm",
    "mlm.dense": "vocab_transform",
    "mlm.norm": "vocab_layer_norm",
    "mlm.decoder.weight": "vocab_projector.weight",
    "mlm.decoder.bias": "vocab_projector.bias",
}


def read_config(config: dict, model_type: str, directory: Path) -> BertConfig:
    if model_type == "distilbert":
        hidden, heads = config_int(config, "dim", 768), config_int(config, "n_heads", 12)
        check_heads(hidden, heads, "dim", "n_heads")
        fields: dict[str, Any] = dict(
            hidden_size=hidden,
            num_heads=heads,
            num_layers=config_int(config, "n_layers", 6),
            intermediate_size=config_int(config, "hidden_dim", 3072),
            type_vocab_size=0,
            layer_norm_eps=1e-12,  # DistilBERT hard-codes it
            activation=canonical_activation(config.get("activation", "gelu"), "activation"),
        )
    else:
        embedding = config.get("position_embedding_type", "absolute")
        if embedding != "absolute":
            raise CheckpointError(f"config.json: position_embedding_type={embedding!r} is not supported")
        hidden, heads = config_int(config, "hidden_size", 768), config_int(config, "num_attention_heads", 12)
        check_heads(hidden, heads, "hidden_size", "num_attention_heads")
        fields = dict(
            hidden_size=hidden,
            num_heads=heads,
            num_layers=config_int(config, "num_hidden_layers", 12),
            intermediate_size=config_int(config, "intermediate_size", 3072),
            type_vocab_size=config_int(config, "type_vocab_size", 2, minimum=0),
            layer_norm_eps=norm_eps(config, "layer_norm_eps", 1e-12),
            activation=canonical_activation(config.get("hidden_act", "gelu"), "hidden_act"),
        )
    pooling, normalize = _sentence_transformers_pooling(directory)
    return BertConfig(
        vocab_size=config_int(config, "vocab_size", 30522),
        max_positions=config_int(config, "max_position_embeddings", 512),
        pad_token_id=token_id(config, "pad_token_id") or 0,
        dialect="distilbert" if model_type == "distilbert" else "bert",
        pooling=pooling,
        normalize=normalize,
        **fields,
    )


def read_weights(cfg: BertConfig, raw: RawWeights) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """Canonical weights, and the config completed with which optional heads the checkpoint has."""
    distil = cfg.dialect == "distilbert"
    names = _DISTILBERT_NAMES if distil else _BERT_NAMES
    summary = (
        f"{'n_layers' if distil else 'num_hidden_layers'}={cfg.num_layers}, "
        f"{'dim' if distil else 'hidden_size'}={cfg.hidden_size}, vocab_size={cfg.vocab_size}, "
        f"max_position_embeddings={cfg.max_positions}"
    )
    ckpt = CheckpointTensors(raw, prefixes=("distilbert.",) if distil else ("bert.",), config_summary=summary)
    has_pooler = ckpt.has(names.get("pooler", "-") + ".weight")
    has_mlm = ckpt.has(names["mlm.dense"] + ".weight")
    cfg = BertConfig(**{**cfg.__dict__, "has_pooler": has_pooler, "has_mlm_head": has_mlm})

    shapes = _canonical_shapes(cfg)
    hf_name = {canon: _hf_name(canon, names) for canon in shapes}
    optional = {hf_name["mlm.decoder.weight"]} if has_mlm else set()  # tied to the token embedding
    ckpt.check({hf_name[c]: s for c, s in shapes.items()}, optional, _IGNORED)

    weights = {c: ckpt[hf_name[c]] for c in shapes if ckpt.has(hf_name[c])}
    if has_mlm and "mlm.decoder.weight" not in weights:
        weights["mlm.decoder.weight"] = weights["tok_embed.weight"]
    return cfg, {name: t.contiguous() for name, t in weights.items()}


def _canonical_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    C, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embed.weight": (V, C),
        "pos_embed.weight": (cfg.max_positions, C),
        **_norm("embed_norm", C),
    }
    if cfg.type_vocab_size:
        shapes["type_embed.weight"] = (cfg.type_vocab_size, C)
    for i in range(cfg.num_layers):
        p = f"layers.{i}"
        for proj in "qkvo":
            shapes |= _linear(f"{p}.attn.{proj}", C, C)
        shapes |= _norm(f"{p}.attn_norm", C) | _norm(f"{p}.mlp_norm", C)
        shapes |= _linear(f"{p}.mlp.fc1", C, F) | _linear(f"{p}.mlp.fc2", F, C)
    if cfg.has_pooler:
        shapes |= _linear("pooler", C, C)
    if cfg.has_mlm_head:
        shapes |= _linear("mlm.dense", C, C) | _norm("mlm.norm", C) | _linear("mlm.decoder", C, V)
    return shapes


def _linear(name: str, fan_in: int, fan_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (fan_out, fan_in), f"{name}.bias": (fan_out,)}


def _norm(name: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def _hf_name(canonical: str, names: dict[str, str]) -> str:
    """`layers.3.attn.q.weight` -> `encoder.layer.3.attention.self.query.weight` (per dialect)."""
    if canonical in names:
        return names[canonical]
    stem, _, leaf = canonical.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "layers":
        template = names[".".join(["layers", "{i}", *parts[2:]])]
        return f"{template.format(i=parts[1])}.{leaf}"
    return f"{names[stem]}.{leaf}"


_POOLING_MODES: tuple[Pooling, ...] = ("cls", "mean", "max")


def _sentence_transformers_pooling(directory: Path) -> tuple[Pooling | None, bool]:
    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return None, False
    try:
        modules = json.loads(modules_path.read_text())
        kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{modules_path}: not a valid sentence-transformers module list ({exc})") from exc
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise CheckpointError(f"{modules_path}: sentence-transformers module(s) {unsupported} not supported")
    if "Pooling" not in kinds:
        return None, "Normalize" in kinds
    pooling_path = directory / kinds["Pooling"] / "config.json"
    try:
        pooling = json.loads(pooling_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{pooling_path}: unreadable pooling config ({exc})") from exc
    modes = [m for m in _POOLING_MODES if pooling.get(f"pooling_mode_{m}_token{'s' if m != 'cls' else ''}")]
    others = [
        k
        for k, v in pooling.items()
        if k.startswith("pooling_mode_")
        and v
        and k not in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
    ]
    if len(modes) != 1 or others:
        raise CheckpointError(f"{pooling_path}: only a single cls, mean or max pooling mode is supported")
    return modes[0], "Normalize" in kinds
