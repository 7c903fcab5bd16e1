"""Random-init Hugging Face checkpoints made locally with `transformers` and `save_pretrained`: the
reference of every parity test, the test checkpoint of each registered family, and the realistic shapes
the benchmarks convert (GPT-2 124M, SmolLM2-135M, Qwen3-0.6B). Nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _random(config_class, defaults: dict[str, Any], overrides: dict[str, Any], seed: int):
    """A transformers config of `defaults` with `overrides`, after seeding torch for the weights about to be made."""
    torch.manual_seed(seed)
    return config_class(**{**defaults, **overrides})


def _save(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def make_gpt2(directory: Path, seed: int = 0, lm_head: bool = True, **overrides) -> Path:
    """A GPT-2 checkpoint. `lm_head=False` saves the bare GPT2Model (no `transformer.` prefix, no head).

    initializer_range defaults to 0.2 (GPT-2 uses 0.02) so that random logits are spread out and
    greedy decoding does not collapse onto near-ties or one repeated token."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    defaults = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=160, initializer_range=0.2,
                    bos_token_id=0, eos_token_id=0)  # fmt: skip
    config = _random(GPT2Config, defaults, overrides, seed)
    return _save((GPT2LMHeadModel if lm_head else GPT2Model)(config).eval(), directory)


def make_bert(directory: Path, seed: int = 0, head: str = "mlm", dialect: str = "bert", **overrides) -> Path:
    """A BERT-family checkpoint. head: "mlm" (a masked-LM head) or "pooler" (BERT: BertModel with its pooler;
    DistilBERT, which has none: the bare DistilBertModel); dialect: "bert" or "distilbert" (`make_distilbert`,
    whose overrides are DistilBERT's).

    Encoders keep transformers' default initializer_range (0.02), the statistics of real checkpoints:
    at 10x that scale the pooler's dense layer amplifies fp16 rounding of its input about 3x, a
    property of the weights rather than of the implementation."""
    if dialect == "distilbert":
        return make_distilbert(directory, seed=seed, mlm=head == "mlm", **overrides)
    from transformers import BertConfig, BertForMaskedLM, BertModel

    defaults = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=197,
                    max_position_embeddings=160)  # fmt: skip
    config = _random(BertConfig, defaults, overrides, seed)
    model = BertForMaskedLM(config) if head == "mlm" else BertModel(config, add_pooling_layer=True)
    return _save(model.eval(), directory)


def make_distilbert(directory: Path, seed: int = 0, mlm: bool = True, **overrides) -> Path:
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertModel

    defaults = dict(n_layers=2, dim=64, n_heads=4, hidden_dim=96, vocab_size=197, max_position_embeddings=160)
    config = _random(DistilBertConfig, defaults, overrides, seed)
    return _save((DistilBertForMaskedLM if mlm else DistilBertModel)(config).eval(), directory)


def make_gpt2_124m(directory: Path) -> Path:
    """GPT-2 small's shapes (12 layers, 768 wide, 12 heads, 50,257 tokens, 1,024 positions), random init;
    reused when `directory` already holds it."""
    if (directory / "config.json").is_file():
        return directory
    return make_gpt2(
        directory,
        n_layer=12,
        n_embd=768,
        n_head=12,
        vocab_size=50257,
        n_positions=1024,
        initializer_range=0.02,
        bos_token_id=50256,
        eos_token_id=50256,
    )


# The Llama-family dialects by Hugging Face model_type: config and model classes of transformers.
_LLAMA_DIALECTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def make_llama(
    directory: Path,
    dialect: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    config_style: str = "v5",
    shard_size: str | None = None,
    build_in_dtype: bool = False,
    **overrides,
) -> Path:
    """A Llama-family checkpoint (`dialect`: llama, mistral, qwen2, qwen3), saved with `save_pretrained`.

    Defaults: 2 layers, width 48, 6 heads of 8 sharing 2 key/value heads (GQA 3:1), vocabulary 211,
    initializer_range 0.2 (spread-out random logits, as for GPT-2). `rope_parameters` in the overrides
    sets the RoPE (transformers 5 style). `config_style="v4"` rewrites the saved config.json the way the
    hub's transformers-4 checkpoints spell it (`rope_theta` + `rope_scaling`, `torch_dtype`). `dtype`
    saves the weights in bf16/fp16 (`build_in_dtype`: initialised in it, for the billion-parameter shapes);
    `shard_size` (e.g. "20KB") writes sharded safetensors."""
    import json

    import transformers

    config_name, model_name = _LLAMA_DIALECTS[dialect]
    kwargs: dict[str, Any] = dict(
        num_hidden_layers=2,
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=211,
        max_position_embeddings=160,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if dialect in ("qwen2", "qwen3"):
        kwargs["use_sliding_window"] = False
    if dialect == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**kwargs)
    model_class = getattr(transformers, model_name)
    if build_in_dtype:  # billions of parameters: never held in fp32 (a 3B model would take 13 GB before the cast)
        model = model_class._from_config(config, dtype=dtype).eval()
    else:
        model = model_class(config).eval().to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, **({"max_shard_size": shard_size} if shard_size else {}))
    if config_style == "v4":
        path = directory / "config.json"
        raw = json.loads(path.read_text())
        rope = raw.pop("rope_parameters", None) or {}
        raw["rope_theta"] = rope.pop("rope_theta", 10000.0)
        if rope.get("rope_type", "default") != "default":
            raw["rope_scaling"] = rope
        else:
            raw["rope_scaling"] = None
        raw["torch_dtype"] = raw.pop("dtype", "float32")
        raw["transformers_version"] = "4.46.0"
        path.write_text(json.dumps(raw, indent=2))
    return directory


def make_smollm2_135m(directory: Path) -> Path:
    """SmolLM2-135M's shapes (30 layers, width 576, 9 heads sharing 3 key/value heads, MLP 1,536, vocabulary
    49,152, tied head, 8,192 positions, rope theta 100,000), random init; reused when already there."""
    if (directory / "config.json").is_file():
        return directory
    return make_llama(
        directory,
        "llama",
        num_hidden_layers=30,
        hidden_size=576,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )


def make_qwen3_06b(directory: Path) -> Path:
    """Qwen3-0.6B's shapes (28 layers, width 1,024, 16 heads of 128 sharing 8 key/value heads, MLP 3,072,
    vocabulary 151,936, tied head, q/k norm, 40,960 positions), random init; reused when already there."""
    if (directory / "config.json").is_file():
        return directory
    return make_llama(
        directory,
        "qwen3",
        num_hidden_layers=28,
        hidden_size=1024,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        max_position_embeddings=40960,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


# Llama 3.2's RoPE: llama3 scaling of a 8,192-token original context to 131,072
_LLAMA32_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip


def make_llama32_1b(directory: Path) -> Path:
    """Llama 3.2 1B's shapes (16 layers, width 2,048, 32 heads of 64 sharing 8 key/value heads, MLP 8,192, vocabulary
    128,256, tied head, llama3 RoPE), bf16 as published, random init; reused when already there."""
    return _big_llama(directory, "llama", num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, head_dim=64,
                      intermediate_size=8192, vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
                      max_position_embeddings=131072, rope_parameters=_LLAMA32_ROPE)  # fmt: skip


def make_llama32_3b(directory: Path) -> Path:
    """Llama 3.2 3B's shapes (28 layers, width 3,072, 24 heads of 128 sharing 8, MLP 8,192, vocabulary 128,256, tied,
    llama3 RoPE), bf16, random init; reused when already there."""
    return _big_llama(directory, "llama", num_hidden_layers=28, hidden_size=3072, num_attention_heads=24, head_dim=128,
                      intermediate_size=8192, vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
                      max_position_embeddings=131072, rope_parameters=_LLAMA32_ROPE)  # fmt: skip


def make_qwen3_17b(directory: Path) -> Path:
    """Qwen3-1.7B's shapes (28 layers, width 2,048, 16 heads of 128 sharing 8, MLP 6,144, vocabulary 151,936, tied,
    q/k norm), bf16, random init; reused when already there."""
    return _big_llama(directory, "qwen3", num_hidden_layers=28, hidden_size=2048, num_attention_heads=16, head_dim=128,
                      intermediate_size=6144, vocab_size=151936, bos_token_id=151643, eos_token_id=151645,
                      max_position_embeddings=40960,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})  # fmt: skip


def _big_llama(directory: Path, dialect: str, **shape) -> Path:
    if (directory / "config.json").is_file():
        return directory
    return make_llama(directory, dialect, dtype=torch.bfloat16, build_in_dtype=True, shard_size="2GB",
                      num_key_value_heads=8, initializer_range=0.02, tie_word_embeddings=True, **shape)  # fmt: skip


def make_gemma3(
    directory: Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    config_style: str = "v5",
    **overrides,
) -> Path:
    """A Gemma 3 text checkpoint (`Gemma3ForCausalLM`, model_type gemma3_text), shaped like Gemma 3 270M with fewer
    layers and a narrower width: 4 query heads of width 256 sharing one key/value head, query_pre_attn_scalar 256,
    a tied head, five sliding layers then a global one (and one more sliding), RoPE bases 1e4 (local) and 1e6
    (global), but a window of 16 positions (the real one is 512) so that a prompt longer than the window is cheap,
    and a vocabulary of 256 (the real one is 262,144). initializer_range 0.02, the published models' (at 0.2 the
    tied table, times sqrt(hidden), outweighs what the sandwich-normed layers add, and greedy decoding repeats its
    input token). `config_style="v4"` rewrites config.json as the hub's transformers-4 configs spell it
    (`sliding_window_pattern` instead of `layer_types`, `rope_theta` + `rope_local_base_freq` + `rope_scaling`)."""
    import json

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    defaults: dict[str, Any] = dict(
        num_hidden_layers=7,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=16,
        vocab_size=256,
        max_position_embeddings=160,
        initializer_range=0.02,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=True,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
    )  # fmt: skip
    config = _random(Gemma3TextConfig, defaults, overrides, seed)
    model = Gemma3ForCausalLM(config).eval().to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if config_style == "v4":
        path = directory / "config.json"
        raw = json.loads(path.read_text())
        layer_types = raw.pop("layer_types")
        pattern = layer_types.index("full_attention") + 1 if "full_attention" in layer_types else len(layer_types) + 1
        kinds = ("sliding_attention", "full_attention")
        every_nth = [kinds[(i + 1) % pattern == 0] for i in range(len(layer_types))]
        assert layer_types == every_nth, "a v4 config says only that every n-th layer is global"
        raw["sliding_window_pattern"] = pattern
        rope = raw.pop("rope_parameters")
        raw["rope_theta"] = rope["full_attention"].get("rope_theta", 1_000_000.0)
        raw["rope_local_base_freq"] = rope["sliding_attention"].get("rope_theta", 10_000.0)
        scaling = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
        raw["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
        raw["torch_dtype"] = raw.pop("dtype", "float32")
        raw["transformers_version"] = "4.50.0"
        path.write_text(json.dumps(raw, indent=2))
    return directory


def make_gemma3_270m(directory: Path) -> Path:
    """Gemma 3 270M's shapes (18 layers, width 640, 4 heads of 256 sharing one key/value head, MLP 2,048, vocabulary
    262,144, tied, a 512-token window on five layers of every six), bf16 as published, random init (std 0.02);
    reused when already there."""
    if (directory / "config.json").is_file():
        return directory
    kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    shape: dict[str, Any] = dict(
        num_hidden_layers=18,
        hidden_size=640,
        intermediate_size=2048,
        vocab_size=262144,
        sliding_window=512,
        max_position_embeddings=32768,
        layer_types=kinds,
    )
    return make_gemma3(directory, dtype=torch.bfloat16, **shape)


def make_gemma3_1b_shaped(directory: Path, seed: int = 0, **overrides) -> Path:
    """Gemma 3 1B's structure (4 heads of 256 sharing one key/value head, every sixth layer global, tied), reduced:
    8 layers of width 96 (the real model: 26 of 1,152), MLP 192, a window of 8."""
    shape: dict[str, Any] = dict(num_hidden_layers=8, hidden_size=96, intermediate_size=192, sliding_window=8)
    return make_gemma3(directory, seed=seed, **{**shape, **overrides})
