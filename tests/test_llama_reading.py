"""The Llama-family reader (Llama, Mistral, Qwen2, Qwen3) against transformers' own reading of the same files:
config fields, every weight, the RoPE frequencies; and one-line refusals of what our model cannot run."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from canonical.errors import CheckpointError
from canonical.llama import LlamaConfig
from convert.hf_common import read_config_json
from convert.hf_llama import read_config as llama_config
from convert.hf_llama import read_weights as llama_weights
from convert.weights import read_raw_weights
from tests.checkpoints import make_llama

# Wavelengths 2*pi*10000^(2i/8) = 6.3, 63, 628, 6283 against 64/4=16 and 64/1=64: one frequency kept, one
# blended, two divided by the factor -- every branch of the llama3 recipe.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# id: make_llama arguments. Between them: every dialect in both config styles, GQA 3:1, 7:1 and 2:1, one KV
# head, head_dim apart from width/heads, tied and untied, biases, default/linear/llama3 RoPE (the v4
# linear one spelled with the old `type` key), bf16/fp16 and sharded files.
CASES: dict[str, dict] = {
    "llama-v5-llama3-biases": dict(dialect="llama", rope_parameters=LLAMA3_ROPE, attention_bias=True, mlp_bias=True),
    "llama-v4-linear-tied": dict(dialect="llama", config_style="v4", old_type_key=True, tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}),
    "mistral-v5-gqa7to1": dict(dialect="mistral", hidden_size=56, num_attention_heads=7, num_key_value_heads=1,
                               rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "mistral-v4-head_dim16": dict(dialect="mistral", config_style="v4", head_dim=16, rope_parameters=LLAMA3_ROPE),
    "qwen2-v5-tied-bf16": dict(dialect="qwen2", tie_word_embeddings=True, dtype=torch.bfloat16),
    "qwen2-v4-sharded-1kv": dict(dialect="qwen2", config_style="v4", shard_size="20KB", num_key_value_heads=1),
    "qwen3-v5-head_dim16-bias-tied": dict(dialect="qwen3", num_attention_heads=4, head_dim=16, attention_bias=True,
                                          tie_word_embeddings=True),
    "qwen3-v4-default-head_dim-fp16": dict(dialect="qwen3", config_style="v4", dtype=torch.float16,
                                           rope_parameters={"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0}),
}  # fmt: skip

_ROTARY = {
    "llama": "LlamaRotaryEmbedding",
    "mistral": "MistralRotaryEmbedding",
    "qwen2": "Qwen2RotaryEmbedding",
    "qwen3": "Qwen3RotaryEmbedding",
}


@dataclass
class Built:
    directory: Path
    cfg: LlamaConfig
    weights: dict[str, torch.Tensor]
    model: torch.nn.Module  # transformers' *ForCausalLM from the same directory, in float32


def _read(directory: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    config = read_config_json(directory)
    cfg = llama_config(config, config["model_type"], directory)
    return llama_weights(cfg, read_raw_weights(directory))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    cache: dict[str, Built] = {}

    def get(case: str) -> Built:
        if case not in cache:
            kwargs = dict(CASES[case])
            old_type_key = kwargs.pop("old_type_key", False)
            directory = make_llama(tmp_path_factory.mktemp(case), **kwargs)
            if old_type_key:  # Llama-2-era configs: {"type": "linear", "factor": 2.0}
                rope = read_config_json(directory)["rope_scaling"]
                _edit_config(directory, rope_scaling={("type" if k == "rope_type" else k): v for k, v in rope.items()})
            cfg, weights = _read(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            cache[case] = Built(directory, cfg, weights, model)
        return cache[case]

    return get


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _hf_key(name: str) -> str:
    """Our canonical name -> transformers' state_dict key (written independently of the reader's table)."""
    if name == "lm_head.weight":
        return name
    for pattern, replacement in (
        (r"^tok_embed\.", "embed_tokens."), (r"^final_norm\.", "norm."),
        (r"\.attn_norm\.", ".input_layernorm."), (r"\.mlp_norm\.", ".post_attention_layernorm."),
        (r"\.attn\.([qkvo])\.", r".self_attn.\1_proj."), (r"\.attn\.([qk])_norm\.", r".self_attn.\1_norm."),
        (r"\.mlp\.(gate|up|down)\.", r".mlp.\1_proj."),
    ):  # fmt: skip
        name = re.sub(pattern, replacement, name)
    return "model." + name


def _one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _assert_rope_matches(cfg: LlamaConfig, rotary: torch.nn.Module) -> None:
    theirs = rotary.inv_freq.double()
    ours = torch.tensor(cfg.rope_inverse_frequencies(), dtype=torch.float64)
    assert ours.shape == theirs.shape
    assert ((ours - theirs).abs() / theirs.abs()).max() <= 1e-6, (ours, theirs)
    assert rotary.attention_scaling == 1.0


# ---- Every case against the transformers model read from the same files ----------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_config_matches_transformers(built, case):
    b = built(case)
    cfg, model = b.cfg, b.model
    hf = model.config
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert cfg.dialect == hf.model_type == CASES[case]["dialect"]
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.max_positions) == (
        hf.vocab_size,
        hf.hidden_size,
        hf.num_hidden_layers,
        hf.intermediate_size,
        hf.max_position_embeddings,
    )
    assert (cfg.num_heads, cfg.num_kv_heads) == (hf.num_attention_heads, hf.num_key_value_heads)
    assert cfg.head_dim == attn.head_dim
    assert attn.q_proj.out_features == cfg.q_width and attn.k_proj.out_features == cfg.kv_width
    rope = hf.rope_parameters
    assert cfg.rope_type == rope["rope_type"] == model.model.rotary_emb.rope_type
    assert cfg.rope_theta == rope["rope_theta"]
    if cfg.rope_type != "default":
        assert cfg.rope_factor == rope["factor"]
    if cfg.rope_type == "llama3":
        assert (cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_positions) == (
            rope["low_freq_factor"],
            rope["high_freq_factor"],
            rope["original_max_position_embeddings"],
        )
    eps = model.model.norm.variance_epsilon
    assert cfg.rms_norm_eps == eps == model.model.layers[0].input_layernorm.variance_epsilon
    assert cfg.attention_bias == (attn.q_proj.bias is not None) == (attn.k_proj.bias is not None)
    assert cfg.attention_out_bias == (attn.o_proj.bias is not None)
    assert cfg.mlp_bias == (mlp.gate_proj.bias is not None) == (mlp.down_proj.bias is not None)
    assert cfg.qk_norm == hasattr(attn, "q_norm") == hasattr(attn, "k_norm")
    assert cfg.activation == hf.hidden_act == "silu"
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert cfg.tie_word_embeddings == tied == CASES[case].get("tie_word_embeddings", False)
    assert cfg.bos_token_id == hf.bos_token_id == 1
    assert cfg.eos_token_ids == (model.generation_config.eos_token_id,) == (2,)


@pytest.mark.parametrize("case", CASES)
def test_weights_equal_transformers_state_dict(built, case):
    b = built(case)
    state = b.model.state_dict()
    assert {_hf_key(name) for name in b.weights} == set(state)
    for name, tensor in b.weights.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        assert torch.equal(tensor, state[_hf_key(name)]), name
    # tied: the head reads as the token table (one tensor on disk, read lazily: canonical/weights.py)
    assert (b.weights.alias_of("lm_head.weight") == "tok_embed.weight") == b.cfg.tie_word_embeddings


@pytest.mark.parametrize("case", CASES)
def test_rope_inverse_frequencies_match_transformers(built, case):
    _assert_rope_matches(built(case).cfg, built(case).model.model.rotary_emb)


def test_cases_cover_the_odd_shapes_and_file_layouts(built):
    cfgs = {case: built(case).cfg for case in CASES}
    assert {c.num_heads // c.num_kv_heads for c in cfgs.values()} >= {2, 3, 7}
    assert any(c.num_kv_heads == 1 for c in cfgs.values())
    assert cfgs["qwen3-v5-head_dim16-bias-tied"].q_width == 64 != cfgs["qwen3-v5-head_dim16-bias-tied"].hidden_size
    assert cfgs["qwen3-v4-default-head_dim-fp16"].head_dim == 128  # transformers' Qwen3 default, not 48/6
    assert {c.rope_type for c in cfgs.values()} == {"default", "linear", "llama3"}
    assert len(list(built("qwen2-v4-sharded-1kv").directory.glob("model-*.safetensors"))) > 1
    raw = load_file(built("qwen2-v5-tied-bf16").directory / "model.safetensors")
    assert raw["model.embed_tokens.weight"].dtype == torch.bfloat16 and "lm_head.weight" not in raw


# ---- Configs shaped like real hub checkpoints (no weights) ------------------------------------------------------

_HUB_CONFIGS = {
    "smollm2-135m": ({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "bos_token_id": 0,
        "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
        "max_position_embeddings": 8192, "mlp_bias": False, "num_attention_heads": 9, "num_hidden_layers": 30,
        "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 49152,
    }, {"bos_token_id": 0, "eos_token_id": 0}, (0,)),
    "llama-3.2-1b-instruct": ({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 32,
        "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 128256,
    }, {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "temperature": 0.6},
       (128001, 128008, 128009)),
    "llama-3.1-8b-base": ({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000, "eos_token_id": 128001,
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "vocab_size": 128256,
    }, {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}, (128001, 128008, 128009)),
    "qwen2.5-0.5b-instruct": ({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 21, "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "use_sliding_window": False, "vocab_size": 151936,
    }, {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}, (151645, 151643)),
    "qwen3-0.6b": ({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "bos_token_id": 151643,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936,
    }, {"bos_token_id": 151643, "eos_token_id": [151645, 151643]}, (151645, 151643)),
    "mistral-7b-v0.3": ({
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32768,
    }, None, (2,)),
}  # fmt: skip


@pytest.mark.parametrize("name", _HUB_CONFIGS)
def test_hub_shaped_configs_match_transformers(tmp_path, name):
    from transformers import AutoConfig

    config, generation, eos = _HUB_CONFIGS[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    cfg = llama_config(read_config_json(tmp_path), config["model_type"], tmp_path)
    hf = AutoConfig.from_pretrained(tmp_path)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (hf.num_attention_heads, hf.num_key_value_heads, head_dim)
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.max_positions) == (
        hf.hidden_size,
        hf.num_hidden_layers,
        hf.vocab_size,
        hf.max_position_embeddings,
    )
    assert (cfg.rms_norm_eps, cfg.tie_word_embeddings) == (hf.rms_norm_eps, hf.tie_word_embeddings)
    assert (cfg.rope_type, cfg.rope_theta) == (hf.rope_parameters["rope_type"], hf.rope_parameters["rope_theta"])
    assert cfg.bos_token_id == hf.bos_token_id and cfg.eos_token_ids == eos
    assert (cfg.attention_bias, cfg.qk_norm) == (config["model_type"] == "qwen2", config["model_type"] == "qwen3")
    module = importlib.import_module(f"transformers.models.{hf.model_type}.modeling_{hf.model_type}")
    _assert_rope_matches(cfg, getattr(module, _ROTARY[hf.model_type])(hf))


def test_llama31_blends_some_frequencies_and_divides_others():
    """The real Llama 3.1 RoPE (head_dim 128) exercises all three regimes; it agrees with transformers above."""
    cfg = llama_config(_HUB_CONFIGS["llama-3.1-8b-base"][0], "llama", Path("/nonexistent"))
    assert cfg.head_dim == 128 and cfg.rope_factor == 8.0 and cfg.rope_original_max_positions == 8192
    plain = LlamaConfig(**{**cfg.__dict__, "rope_type": "default"}).rope_inverse_frequencies()
    ratios = [p / s for p, s in zip(plain, cfg.rope_inverse_frequencies(), strict=True)]
    assert ratios[0] == 1.0 and ratios[-1] == pytest.approx(8.0)
    assert any(1.0 < r < 8.0 for r in ratios)


def test_missing_fields_take_the_dialects_transformers_defaults(tmp_path):
    from transformers import AutoConfig

    for dialect in ("llama", "mistral", "qwen2", "qwen3"):
        config = {"model_type": dialect, "hidden_size": 128, "num_attention_heads": 32, "sliding_window": None}
        (tmp_path / "config.json").write_text(json.dumps(config))
        cfg, hf = llama_config(config, dialect, tmp_path), AutoConfig.from_pretrained(tmp_path)
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        assert (cfg.num_kv_heads, cfg.head_dim, cfg.max_positions, cfg.vocab_size) == (
            hf.num_key_value_heads,
            head_dim,
            hf.max_position_embeddings,
            hf.vocab_size,
        ), dialect
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.rope_theta) == (
            hf.bos_token_id,
            hf.eos_token_id,
            hf.rope_parameters["rope_theta"],
        ), dialect


def test_eos_ids_are_config_first_then_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2, 9]}))
    config = {"model_type": "llama", "hidden_size": 48, "num_attention_heads": 6, "eos_token_id": [2, 5]}
    assert llama_config(config, "llama", tmp_path).eos_token_ids == (2, 5, 7, 9)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as excinfo:
        llama_config(config, "llama", tmp_path)
    _one_line_error(excinfo, "generation_config.json", "not valid JSON")


# ---- Layouts: bare base model, old rotary buffers, tied head stored twice ---------------------------------------


def test_bare_base_model_without_prefix_and_head_reads_the_same(built, tmp_path):
    from transformers import AutoModel

    tied = built("qwen3-v5-head_dim16-bias-tied")
    AutoModel.from_pretrained(tied.directory).save_pretrained(tmp_path / "bare")
    assert not any(key.startswith(("model.", "lm_head")) for key in load_file(tmp_path / "bare" / "model.safetensors"))
    cfg, weights = _read(tmp_path / "bare")
    assert cfg == tied.cfg
    assert weights.keys() == tied.weights.keys()
    assert all(torch.equal(weights[name], tied.weights[name]) for name in weights)
    assert weights.alias_of("lm_head.weight") == "tok_embed.weight"  # the table, read from one tensor


def test_bare_base_model_of_an_untied_config_lacks_its_head(built, tmp_path):
    directory = Path(shutil.copytree(built("llama-v5-llama3-biases").directory, tmp_path / "ckpt"))
    state = {k.removeprefix("model."): v for k, v in load_file(directory / "model.safetensors").items()}
    del state["lm_head.weight"]
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError) as excinfo:
        _read(directory)
    _one_line_error(excinfo, "model.safetensors", "missing tensor 'lm_head.weight'", "tie_word_embeddings=false")


def test_rotary_inv_freq_buffers_of_old_checkpoints_are_ignored(built, tmp_path):
    b = built("qwen2-v5-tied-bf16")
    directory = Path(shutil.copytree(b.directory, tmp_path / "ckpt"))
    state = load_file(directory / "model.safetensors")
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    state["model.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, directory / "model.safetensors")
    assert _read(directory)[1].keys() == b.weights.keys()


def test_tied_config_with_a_stored_head(built, tmp_path):
    b = built("llama-v5-llama3-biases")  # untied: lm_head differs from the embedding
    directory = Path(shutil.copytree(b.directory, tmp_path / "ckpt"))
    _edit_config(directory, tie_word_embeddings=True)
    with pytest.raises(CheckpointError) as excinfo:
        _read(directory)
    _one_line_error(excinfo, "'lm_head.weight' differs from 'model.embed_tokens.weight'", "tie_word_embeddings=true")

    state = load_file(directory / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # a tied head saved as a copy
    save_file(state, directory / "model.safetensors")
    _, weights = _read(directory)
    assert weights.alias_of("lm_head.weight") == "tok_embed.weight"  # the table, read from one tensor


# ---- Bad input: one line naming the field or key ----------------------------------------------------------------

_DELETE = object()

_BAD_CONFIGS = {
    "yarn": ("llama-v5-llama3-biases", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
             ["rope_parameters.rope_type='yarn'", "supported: default, linear, llama3"]),
    "dynamic-v4-type": ("llama-v4-linear-tied", dict(rope_scaling={"type": "dynamic", "factor": 2.0}),
                        ["rope_scaling.type='dynamic'", "not supported"]),
    "llama3-missing-factor": ("llama-v5-llama3-biases",
                              dict(rope_parameters={k: v for k, v in LLAMA3_ROPE.items() if k != "low_freq_factor"}),
                              ["rope_parameters.low_freq_factor", "missing"]),
    "mistral-sliding-window": ("mistral-v5-gqa7to1", dict(sliding_window=64),
                               ["sliding_window=64", "max_position_embeddings=160"]),
    "qwen2-sliding-window": ("qwen2-v5-tied-bf16", dict(use_sliding_window=True, sliding_window=64, layer_types=_DELETE,
                                                        max_window_layers=0), ["sliding_window=64"]),
    "qwen3-sliding-layer-types": ("qwen3-v5-head_dim16-bias-tied", dict(
        use_sliding_window=True, sliding_window=32, layer_types=["full_attention", "sliding_attention"]),
        ["sliding_window=32"]),
    "width-not-divisible": ("llama-v5-llama3-biases", dict(hidden_size=50, head_dim=_DELETE),
                            ["hidden_size=50", "num_attention_heads=6"]),
    "kv-heads-not-dividing": ("qwen2-v4-sharded-1kv", dict(num_key_value_heads=4),
                              ["num_attention_heads=6", "num_key_value_heads=4"]),
    "gelu": ("qwen3-v4-default-head_dim-fp16", dict(hidden_act="gelu"), ["hidden_act='gelu'", "SwiGLU"]),
    "unknown-activation": ("llama-v5-llama3-biases", dict(hidden_act="swiglu2"), ["hidden_act='swiglu2'"]),
    "layers-as-string": ("mistral-v4-head_dim16", dict(num_hidden_layers="2"), ["'num_hidden_layers'", "'2'"]),
    "odd-head-dim": ("qwen3-v5-head_dim16-bias-tied", dict(head_dim=15), ["head_dim=15", "even"]),
    "eos-not-an-id": ("llama-v5-llama3-biases", dict(eos_token_id="</s>"), ["'eos_token_id'", "'</s>'"]),
    "quantized": ("llama-v5-llama3-biases", dict(quantization_config={"quant_method": "awq"}),
                  ["quantization_config", "'awq'"]),
}  # fmt: skip


@pytest.mark.parametrize("name", _BAD_CONFIGS)
def test_unsupported_config_is_refused_in_one_line(built, tmp_path, name):
    case, changes, fragments = _BAD_CONFIGS[name]
    config = read_config_json(built(case).directory)
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    with pytest.raises(CheckpointError) as excinfo:
        llama_config(config, config["model_type"], tmp_path)
    _one_line_error(excinfo, "config.json", *fragments)


@pytest.mark.parametrize("config_changes", [dict(sliding_window=4096), dict(sliding_window=160)])
def test_sliding_window_no_shorter_than_the_context_is_accepted(built, tmp_path, config_changes):
    config = read_config_json(built("mistral-v5-gqa7to1").directory) | config_changes
    assert llama_config(config, "mistral", tmp_path).max_positions == 160
    qwen = read_config_json(built("qwen2-v5-tied-bf16").directory) | dict(sliding_window=64)
    assert llama_config(qwen, "qwen2", tmp_path).num_layers == 2  # use_sliding_window is false


def _bad_weights(built, tmp_path, case: str, edit) -> str:
    directory = Path(shutil.copytree(built(case).directory, tmp_path / "ckpt"))
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError) as excinfo:
        _read(directory)
    return _one_line_error(excinfo, "model.safetensors")


def test_missing_qk_norm_is_refused(built, tmp_path):
    message = _bad_weights(
        built, tmp_path, "qwen3-v5-head_dim16-bias-tied", lambda s: s.pop("model.layers.1.self_attn.k_norm.weight")
    )
    assert "missing tensor 'layers.1.self_attn.k_norm.weight'" in message and "model_type=qwen3" in message


def test_mis_shaped_tensor_is_refused(built, tmp_path):
    def edit(state):
        state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(48, 48)

    message = _bad_weights(built, tmp_path, "llama-v5-llama3-biases", edit)
    assert "'model.layers.0.self_attn.k_proj.weight' has shape [48, 48]" in message and "implies [16, 48]" in message


def test_bias_the_config_does_not_declare_is_refused(built, tmp_path):
    def edit(state):
        state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(48)

    message = _bad_weights(built, tmp_path, "qwen2-v5-tied-bf16", edit)  # Qwen2 never has an o bias
    assert "unexpected tensor 'model.layers.0.self_attn.o_proj.bias'" in message


def test_integer_weights_are_refused(built, tmp_path):
    def edit(state):
        state["model.norm.weight"] = torch.ones(48, dtype=torch.int8)

    assert "'model.norm.weight' has dtype torch.int8" in _bad_weights(built, tmp_path, "qwen2-v5-tied-bf16", edit)
