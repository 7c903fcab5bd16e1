"""The Gemma 3 family's own behaviour (the shared runners of tests/families.py cover its parity): the reader against
transformers' own reading of the same files (config fields, every weight, both RoPE tables) in both config styles
and as a text-only `gemma3` checkpoint; one-line refusals of what our models cannot run; that the sliding window,
the two RoPE bases and the query scale are each what makes a prompt longer than the window match the reference;
and the fp16 guard of the ANE model (the scaled residual stream): 100,000-sized activations stay finite."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ane_model.gemma3
from canonical.errors import CheckpointError
from canonical.gemma3 import Gemma3Config
from convert.checkpoint import load_checkpoint
from convert.random_checkpoints import make_gemma3, make_gemma3_1b_shaped
from convert.registry import build_ane_model, build_mlx_model
from ondevice.parity import TOLERANCES, compare

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]
GLOBAL_LINEAR = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                 "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}  # fmt: skip

# id: (factory, arguments). Both config styles, 270M and 1B structure, tied and untied, biases, bf16, a linear
# global RoPE, a layer pattern other than 6, a generation_config with the end-of-turn id.
CASES: dict[str, tuple] = {
    "270m-v5": (make_gemma3, dict()),
    "1b-v4": (make_gemma3_1b_shaped, dict(config_style="v4")),
    "untied-biases-linear-bf16": (make_gemma3, dict(tie_word_embeddings=False, attention_bias=True,
                                                    dtype=torch.bfloat16, rope_parameters=GLOBAL_LINEAR)),
    "v4-pattern3-linear": (make_gemma3, dict(config_style="v4", num_hidden_layers=6, rope_parameters=GLOBAL_LINEAR,
                                             layer_types=["sliding_attention", "sliding_attention",
                                                          "full_attention"] * 2)),
}  # fmt: skip


@dataclasses.dataclass
class Built:
    directory: Path
    cfg: Gemma3Config
    weights: dict
    model: torch.nn.Module  # transformers' Gemma3ForCausalLM from the same directory, in float32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    cache: dict[str, Built] = {}

    def get(case: str) -> Built:
        if case not in cache:
            factory, kwargs = CASES[case]
            directory = factory(tmp_path_factory.mktemp(case), seed=11, **kwargs)
            ckpt = load_checkpoint(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            cache[case] = Built(directory, ckpt.config, ckpt.weights, model)
        return cache[case]

    return get


def _hf_key(name: str) -> str:
    """Our canonical name -> transformers' state_dict key (written independently of the reader's table)."""
    if name == "lm_head.weight":
        return name
    for old, new in ((".attn_norm.", ".input_layernorm."), (".attn_post_norm.", ".post_attention_layernorm."),
                     (".mlp_norm.", ".pre_feedforward_layernorm."), (".mlp_post_norm.", ".post_feedforward_layernorm."),
                     (".attn.q_norm.", ".self_attn.q_norm."), (".attn.k_norm.", ".self_attn.k_norm."),
                     (".attn.q.", ".self_attn.q_proj."), (".attn.k.", ".self_attn.k_proj."),
                     (".attn.v.", ".self_attn.v_proj."), (".attn.o.", ".self_attn.o_proj."),
                     (".mlp.gate.", ".mlp.gate_proj."), (".mlp.up.", ".mlp.up_proj."),
                     (".mlp.down.", ".mlp.down_proj.")):  # fmt: skip
        name = name.replace(old, new)
    name = name.replace("tok_embed.", "embed_tokens.").replace("final_norm.", "norm.")
    return "model." + name


# ---- reading --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_config_matches_transformers(built, case):
    b = built(case)
    cfg, hf, model = b.cfg, b.model.config, b.model.model
    attn = model.layers[0].self_attn
    ours = (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.max_positions)
    theirs = (hf.vocab_size, hf.hidden_size, hf.num_hidden_layers, hf.intermediate_size, hf.max_position_embeddings)
    assert ours == theirs
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (hf.num_attention_heads, hf.num_key_value_heads, 256)
    assert cfg.head_dim == attn.head_dim and cfg.num_kv_heads == 1
    assert cfg.sliding_layers == tuple(t == "sliding_attention" for t in hf.layer_types)
    assert cfg.sliding_layers == tuple(layer.self_attn.is_sliding for layer in model.layers)
    assert cfg.sliding_window == hf.sliding_window == model.layers[0].self_attn.sliding_window
    assert cfg.attention.scale == attn.scaling == 256**-0.5
    assert cfg.embed_scale == float(model.embed_tokens.embed_scale)  # the same float32, not sqrt(C) in doubles
    assert cfg.embed_scale != cfg.hidden_size**0.5 or float(cfg.hidden_size**0.5).is_integer()
    assert cfg.rms_norm_eps == model.norm.eps == attn.q_norm.eps
    assert cfg.attention_bias == (attn.q_proj.bias is not None) == (attn.o_proj.bias is not None)
    assert cfg.activation == "gelu_tanh" and hf.hidden_activation == "gelu_pytorch_tanh"
    tied = b.model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert cfg.tie_word_embeddings == tied
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (hf.bos_token_id, (hf.eos_token_id,)) == (2, (1,))


@pytest.mark.parametrize("case", CASES)
def test_weights_equal_transformers_state_dict_norms_as_one_plus_w(built, case):
    b = built(case)
    state = b.model.state_dict()
    assert {_hf_key(name) for name in b.weights} == set(state)
    norms = 0
    for name, tensor in b.weights.items():
        theirs = state[_hf_key(name)].float()
        assert tensor.dtype == torch.float32, name
        if "norm" in name:  # Gemma's RMSNorm multiplies by (1 + w): the canonical weight is that multiplier
            norms += 1
            assert torch.equal(tensor, 1.0 + theirs), name
        else:
            assert torch.equal(tensor, theirs), name
    assert norms == 6 * b.cfg.num_layers + 1
    assert (b.weights.alias_of("lm_head.weight") == "tok_embed.weight") == b.cfg.tie_word_embeddings


@pytest.mark.parametrize("case", CASES)
def test_both_rope_tables_match_transformers(built, case):
    b = built(case)
    rotary = b.model.model.rotary_emb
    for kind, layer_type in (("sliding", "sliding_attention"), ("global", "full_attention")):
        theirs = getattr(rotary, f"{layer_type}_inv_freq").double()
        ours = torch.tensor(b.cfg.rope_inverse_frequencies(kind), dtype=torch.float64)
        assert ((ours - theirs).abs() / theirs.abs()).max() <= 1e-6, kind
        assert getattr(rotary, f"{layer_type}_attention_scaling") == 1.0


def test_cases_cover_both_config_styles_and_rope_scalings(built):
    cfgs = {case: built(case).cfg for case in CASES}
    assert cfgs["v4-pattern3-linear"].sliding_layers == (True, True, False) * 2
    assert cfgs["1b-v4"].sliding_layers == (True,) * 5 + (False,) + (True,) * 2
    assert cfgs["v4-pattern3-linear"].rope_factor_global == 8.0 == cfgs["untied-biases-linear-bf16"].rope_factor_global
    assert "layer_types" not in json.loads((built("1b-v4").directory / "config.json").read_text())


def test_end_of_turn_ids_from_generation_config(built, tmp_path):
    directory = _copy(built("270m-v5").directory, tmp_path)
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, 106]}))
    assert load_checkpoint(directory).config.eos_token_ids == (1, 106)


@pytest.mark.parametrize("layout", ["transformers-5", "transformers-4"])
def test_a_text_only_gemma3_checkpoint_reads_as_its_language_model(built, tmp_path, layout):
    """model_type gemma3 (the multimodal config) whose weights hold the language model only."""
    b = built("untied-biases-linear-bf16")  # untied: the head's key moves too
    directory = _as_multimodal(b.directory, tmp_path, layout)
    ckpt = load_checkpoint(directory)
    assert ckpt.model_type == "gemma3" and ckpt.config == b.cfg
    assert set(ckpt.weights) == set(b.weights)
    for name in b.weights:
        assert torch.equal(ckpt.weights[name], b.weights[name]), name


def _copy(source: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "copy"
    shutil.copytree(source, directory)
    return directory


def _as_multimodal(source: Path, tmp_path: Path, layout: str) -> Path:
    directory = _copy(source, tmp_path)
    text = json.loads((directory / "config.json").read_text())
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
              "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32}, "mm_tokens_per_image": 4,
              "tie_word_embeddings": text["tie_word_embeddings"]}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    tensors = load_file(directory / "model.safetensors")
    body, head = ("model.language_model.", "") if layout == "transformers-5" else ("language_model.model.",
                                                                                  "language_model.")  # fmt: skip
    renamed = {(head + k if k == "lm_head.weight" else body + k.removeprefix("model.")): v for k, v in tensors.items()}
    save_file(renamed, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


# ---- bad input: one line naming the field, key or limit ---------------------------------------------------------


def _edited(source: Path, tmp_path: Path, **changes) -> Path:
    directory = _copy(source, tmp_path)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return directory


BAD_CONFIGS = {
    "final logit softcapping": (dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0"),
    "attention logit softcapping": (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping=50.0"),
    "bidirectional": (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    "layer_types too short": (dict(layer_types=["sliding_attention"]), "'layer_types' must be a list of 7"),
    "unknown layer type": (dict(layer_types=["chunked_attention"] * 7), "layer_types holds 'chunked_attention'"),
    "yarn rope": (dict(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                        "full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}),
                  "rope_parameters.full_attention.rope_type='yarn'"),
    "rope_parameters not per layer type": (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
                                           "sliding_attention and full_attention"),
    "window 0": (dict(sliding_window=0), "'sliding_window' must be an integer >= 1"),
    "query scalar 0": (dict(query_pre_attn_scalar=0), "'query_pre_attn_scalar' must be a finite number > 0"),
    "odd head_dim": (dict(head_dim=255), "head_dim=255 must be even"),
    "kv heads do not divide": (dict(num_key_value_heads=3), "num_attention_heads=4 is not divisible by "
                                                            "num_key_value_heads=3"),
    "quantized": (dict(quantization_config={"quant_method": "gptq"}), "quantization_config (quant_method='gptq')"),
    "pattern 0 in a v4 config": (dict(layer_types=..., sliding_window_pattern=0), "'sliding_window_pattern'"),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_CONFIGS)
def test_bad_configs_are_refused_in_one_line(built, tmp_path, bad):
    changes, fragment = BAD_CONFIGS[bad]
    directory = _edited(built("270m-v5").directory, tmp_path, **changes)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(directory)
    message = str(excinfo.value)
    assert "\n" not in message and fragment in message, message


def test_a_gemma3_config_without_its_text_config_is_refused(built, tmp_path):
    directory = _edited(built("270m-v5").directory, tmp_path, model_type="gemma3")
    with pytest.raises(CheckpointError, match="'text_config'") as excinfo:
        load_checkpoint(directory)
    assert "\n" not in str(excinfo.value)


def test_the_vision_tower_is_refused_in_one_line(built, tmp_path):
    directory = _as_multimodal(built("270m-v5").directory, tmp_path, "transformers-5")
    tensors = load_file(directory / "model.safetensors")
    tensors["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(32, 3, 14, 14)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(directory)
    message = str(excinfo.value)
    assert "\n" not in message and "vision tower" in message and "model.vision_tower." in message, message


def test_a_missing_post_norm_is_refused_naming_it(built, tmp_path):
    directory = _copy(built("270m-v5").directory, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.3.post_feedforward_layernorm.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(directory)
    message = str(excinfo.value)
    assert "\n" not in message and "'layers.3.post_feedforward_layernorm.weight'" in message, message


# ---- a prompt longer than the window: each Gemma-specific piece is what makes it match ----------------------------


@pytest.fixture(scope="module")
def long_prompt(built):
    """The 270M-shaped case (window 16), a prompt of 60 tokens, transformers' logits."""
    b = built("270m-v5")
    ids = np.random.default_rng(3).integers(0, b.cfg.vocab_size, size=60).tolist()
    with torch.inference_mode():
        want = b.model(torch.tensor([ids])).logits[0].numpy()
    return b, ids, want


def _ane_logits(cfg: Gemma3Config, weights, ids: list[int]) -> np.ndarray:
    model = build_ane_model(cfg, weights)
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0, :, 0, :].t().numpy()


def _mlx_logits(cfg: Gemma3Config, weights, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(build_mlx_model(cfg, weights)(mx.array([ids]))[0])


WRONG = {  # a config that differs from the checkpoint's in one Gemma-specific respect
    "no window": lambda cfg: dataclasses.replace(cfg, sliding_window=cfg.max_positions),
    "every layer global": lambda cfg: dataclasses.replace(cfg, sliding_layers=(False,) * cfg.num_layers),
    "rope bases swapped": lambda cfg: dataclasses.replace(cfg, rope_theta_local=cfg.rope_theta_global,
                                                          rope_theta_global=cfg.rope_theta_local),
    "query scale 1/sqrt(head_dim) of 128": lambda cfg: dataclasses.replace(cfg, query_pre_attn_scalar=128.0),
}  # fmt: skip


@pytest.mark.parametrize("backend", ["torch-ane", "mlx"])
def test_a_prompt_past_the_window_matches_and_each_gemma_piece_is_needed(long_prompt, backend):
    b, ids, want = long_prompt
    logits = _ane_logits if backend == "torch-ane" else _mlx_logits
    assert compare("logits", logits(b.cfg, b.weights, ids), want).within(FP32)
    for name, wrong in WRONG.items():
        # the first window's positions agree where only the window differs; the prompt's tail cannot
        got = compare("logits", logits(wrong(b.cfg), b.weights, ids), want)
        assert got.rel_max_abs > 100 * FP32.rel_max_abs, (name, got)


# ---- fp16: the scaled residual stream ---------------------------------------------------------------------------

PLANTED = 50_000.0  # a post-feedforward norm weight that drives the residual stream past fp16's 65,504


@pytest.fixture(scope="module")
def planted(built, tmp_path_factory):
    """The 270M-shaped checkpoint with its first layer's post-feedforward norm at 1 + 50,000: transformers' fp32
    residual stream then peaks above 100,000, as Gemma 3 270M's does on real text."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("planted") / "gemma3"
    shutil.copytree(built("270m-v5").directory, directory)
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.post_feedforward_layernorm.weight"] += PLANTED
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    ckpt = load_checkpoint(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = np.random.default_rng(5).integers(0, ckpt.config.vocab_size, size=40).tolist()
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    peak = max(float(h.abs().max()) for h in out.hidden_states[1:-1])  # the residual stream after each block
    return ckpt, ids, out.logits[0].numpy(), peak


def test_planted_activations_reach_past_fp16(planted):
    _, _, _, peak = planted
    assert peak > 100_000 > 65_504


def test_the_scaled_residual_stream_keeps_fp32_parity_and_fp16_finite(planted):
    ckpt, ids, want, _ = planted
    fp32 = _ane_logits(ckpt.config, ckpt.weights, ids)
    assert compare("fp32", fp32, want).within(FP32)
    model = build_ane_model(ckpt.config, ckpt.weights).half()  # as Core ML runs it: every op in fp16
    with torch.inference_mode():
        hidden = model.hidden_states(torch.tensor([ids]))
        fp16 = model(torch.tensor([ids]))[0, :, 0, :].t().float().numpy()
    assert torch.isfinite(hidden).all() and np.isfinite(fp16).all()
    result = compare("fp16", fp16, want)
    assert result.within(FP16), result


def test_the_planted_model_stays_finite_in_an_fp16_core_ml_package(planted, tmp_path):
    """The same through conversion: an fp16 package, run by the evaluator (every op's result rounded to fp16)."""
    from convert.coreml import CoreMLOptions, convert_to_coreml
    from ondevice.backends.coreml import load_package

    ckpt, ids, want, _ = planted
    package = convert_to_coreml(ckpt.directory, tmp_path / "planted.mlpackage",
                                CoreMLOptions(context=48, seq_lens=(16,)), progress=False)  # fmt: skip
    got = load_package(package).prefill(ids)
    assert np.isfinite(got).all()
    result = compare("fp16", got, want)
    assert result.within(FP16), result


def test_without_the_scaled_stream_fp16_overflows(planted, monkeypatch):
    """The guard is what keeps the planted model finite: with k = 1 its fp16 residual overflows."""
    ckpt, ids, _, _ = planted
    monkeypatch.setattr(ane_model.gemma3, "RESIDUAL_SCALE", 1.0)
    model = build_ane_model(ckpt.config, ckpt.weights).half()
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))
    assert not torch.isfinite(logits).all()


def test_the_scaled_stream_is_exact_in_fp32(built, monkeypatch):
    """k is a power of two: the model with k = 64 computes, in fp32, the model with k = 1's logits to rounding."""
    b = built("1b-v4")
    ids = torch.tensor([np.random.default_rng(8).integers(0, b.cfg.vocab_size, size=30).tolist()])
    with torch.inference_mode():
        scaled = build_ane_model(b.cfg, b.weights)(ids)
        monkeypatch.setattr(ane_model.gemma3, "RESIDUAL_SCALE", 1.0)
        plain = build_ane_model(b.cfg, b.weights)(ids)
    assert ane_model.gemma3.RESIDUAL_SCALE == 1.0
    assert (scaled - plain).abs().max() <= 1e-5 * plain.abs().max()
