"""The Llama family under mlx-lm's three model classes (`convert/mlx_lm_llama.py`): which class each dialect's
config goes to, what mlx-lm cannot express (q/k norm with biases, an activation other than SiLU), the missing
biases written as zeros, and the config keys that would make mlx-lm build another model. The exports of every
dialect through the command line are checked by the shared runner, tests/test_mlx_export.py."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from canonical.llama import LlamaConfig
from convert.hf_common import read_config_json
from convert.hf_llama import read_config, read_weights
from convert.mlx_lm_llama import (
    from_mlx_lm,
    mlx_lm_compatible,
    mlx_lm_config,
    mlx_lm_incompatibility,
    mlx_lm_model_type,
    to_mlx_lm,
)
from convert.weights import read_raw_weights
from mlx_model.llama import LlamaModel
from ondevice.parity import TOLERANCES, compare
from tests.families import MLX, make


def test_missing_attention_biases_are_written_as_zeros(family_root, tmp_path):
    """A q/k/v-bias-only config that mlx-lm's qwen2 cannot hold (here: called a llama) goes to its llama class, with
    an o bias of zeros: same logits, and the zeros are gone again on the way back."""
    import mlx_lm
    from tokenizers import Tokenizer, models

    qwen2 = next(case for case in MLX["llama"] if case.overrides.get("dialect") == "qwen2")
    directory = make(qwen2, family_root)
    cfg = dataclasses.replace(read_config(read_config_json(directory), "qwen2", directory), dialect="llama")
    _, weights = read_weights(cfg, read_raw_weights(directory))
    assert mlx_lm_model_type(cfg) == "llama" and cfg.attention_bias and not cfg.attention_out_bias
    ours = LlamaModel.from_canonical(cfg, weights)
    out = tmp_path / "mlx"
    out.mkdir()
    named = to_mlx_lm(dict(tree_flatten(ours.parameters())), cfg)
    mx.save_safetensors(str(out / "model.safetensors"), named, metadata={"format": "mlx"})
    (out / "config.json").write_text(
        json.dumps(mlx_lm_config(cfg, json.loads((directory / "config.json").read_text())))
    )
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(cfg.vocab_size)}, unk_token="w0")).save(
        str(out / "tokenizer.json")
    )
    assert not named["model.layers.0.self_attn.o_proj.bias"].any()
    assert set(from_mlx_lm(named, cfg)) == set(dict(tree_flatten(ours.parameters())))
    theirs, _ = mlx_lm.load(str(out))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=40).tolist()
    want = np.array(ours(mx.array([ids]))[0].astype(mx.float32))
    c = compare("logits", np.array(theirs(mx.array([ids]))[0]), want)
    assert c.within(TOLERANCES["fp32"]), c


def test_mlx_lm_compatibility_rules():
    base = LlamaConfig(vocab_size=64, max_positions=64, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=16, intermediate_size=64)  # fmt: skip
    qwen2 = dataclasses.replace(base, dialect="qwen2", attention_bias=True)
    qwen3 = dataclasses.replace(base, dialect="qwen3", qk_norm=True, head_dim=32)
    assert [mlx_lm_model_type(c) for c in (base, dataclasses.replace(base, dialect="mistral"), qwen2, qwen3)] == [
        "llama", "mistral", "qwen2", "qwen3"
    ]  # fmt: skip
    # mlx-lm's qwen2 derives head_dim from the width and has no MLP bias: its llama takes those
    assert mlx_lm_model_type(dataclasses.replace(qwen2, head_dim=32)) == "llama"
    assert mlx_lm_model_type(dataclasses.replace(qwen2, mlp_bias=True)) == "llama"
    for compatible in (
        base,
        qwen2,
        qwen3,
        dataclasses.replace(base, attention_bias=True, attention_out_bias=True),
        dataclasses.replace(base, attention_out_bias=True),
        dataclasses.replace(base, rope_type="llama3"),
    ):
        assert mlx_lm_compatible(compatible), compatible
    for bias in ("attention_bias", "attention_out_bias", "mlp_bias"):  # qwen3 has no bias anywhere
        cfg = dataclasses.replace(qwen3, **{bias: True})
        assert not mlx_lm_compatible(cfg) and "q/k norm" in mlx_lm_incompatibility(cfg)
    assert not mlx_lm_compatible(dataclasses.replace(base, activation="gelu"))

    # the config: our values win over the source's, and keys that would change mlx-lm's model go
    source = {"model_type": "llama", "hidden_size": 1, "sliding_window": 8, "layer_types": ["sliding_attention"],
              "quantization_config": {"quant_method": "gptq"}, "rope_scaling": {"type": "dynamic", "factor": 2.0},
              "eos_token_id": [2, 3], "architectures": ["LlamaForCausalLM"]}  # fmt: skip
    config = mlx_lm_config(dataclasses.replace(base, rope_type="linear", rope_factor=4.0), source)
    assert config["hidden_size"] == 64 and config["sliding_window"] is None and "quantization_config" not in config
    assert config["layer_types"] == ["full_attention"] and config["rope_scaling"]["factor"] == 4.0
    assert config["eos_token_id"] == [2, 3] and config["architectures"] == ["LlamaForCausalLM"]
