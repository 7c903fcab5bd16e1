"""Every supported checkpoint layout and dialect reads into the same canonical weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from canonical.bert import BertConfig
from canonical.gpt2 import GPT2Config
from convert.checkpoint import load_checkpoint
from tests.checkpoints import make_bert, make_distilbert, make_gpt2


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_gpt2_lm_head_model_reads_canonical_config(gpt2_dir):
    ckpt = load_checkpoint(gpt2_dir)
    assert ckpt.model_type == "gpt2"
    assert ckpt.config == GPT2Config(
        vocab_size=211,
        max_positions=160,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    raw = load_file(gpt2_dir / "model.safetensors")
    # Conv1D stores (in, out): the canonical (out, in) q is the first third of c_attn, transposed.
    q = raw["transformer.h.1.attn.c_attn.weight"][:, :64].t()
    assert torch.equal(ckpt.weights["layers.1.attn.q.weight"], q)
    assert torch.equal(ckpt.weights["lm_head.weight"], ckpt.weights["tok_embed.weight"])  # tied, absent on disk


def test_gpt2_bare_model_without_prefix_and_head_reads_the_same(tmp_path):
    with_head = load_checkpoint(make_gpt2(tmp_path / "lm", seed=3))
    bare = load_checkpoint(make_gpt2(tmp_path / "bare", seed=3, lm_head=False))
    assert "transformer.wte.weight" not in load_file(tmp_path / "bare" / "model.safetensors")
    _same_weights(with_head.weights, bare.weights)


def test_gpt2_untied_head_is_read_from_lm_head(tmp_path):
    directory = make_gpt2(tmp_path / "untied", tie_word_embeddings=False)
    ckpt = load_checkpoint(directory)
    raw = load_file(directory / "model.safetensors")
    assert torch.equal(ckpt.weights["lm_head.weight"], raw["lm_head.weight"])
    assert not torch.equal(ckpt.weights["lm_head.weight"], ckpt.weights["tok_embed.weight"])


def test_sharded_safetensors_read_like_a_single_file(tmp_path, gpt2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    _same_weights(load_checkpoint(tmp_path / "sharded").weights, load_checkpoint(gpt2_dir).weights)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path, bert_dir):
    directory = tmp_path / "bin"
    shutil.copytree(bert_dir, directory)
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    _same_weights(load_checkpoint(directory).weights, load_checkpoint(bert_dir).weights)


def test_bert_with_pooler_and_distilbert_with_mlm_head(tmp_path, distilbert_dir):
    bert = load_checkpoint(make_bert(tmp_path / "pooler", head="pooler"))
    assert isinstance(bert.config, BertConfig)
    assert bert.config.has_pooler and not bert.config.has_mlm_head
    assert bert.config.type_vocab_size == 2

    distil = load_checkpoint(distilbert_dir)
    assert distil.config.dialect == "distilbert"
    assert distil.config.type_vocab_size == 0 and distil.config.has_mlm_head
    assert torch.equal(distil.weights["mlm.decoder.weight"], distil.weights["tok_embed.weight"])


def test_old_layer_norm_names_gamma_beta_are_accepted(tmp_path, bert_dir):
    from safetensors.torch import save_file

    directory = tmp_path / "gamma"
    shutil.copytree(bert_dir, directory)
    state = load_file(directory / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    save_file(renamed, directory / "model.safetensors")
    _same_weights(load_checkpoint(directory).weights, load_checkpoint(bert_dir).weights)


def test_sentence_transformers_pooling_is_read_from_modules_json(minilm_dir):
    ckpt = load_checkpoint(minilm_dir)
    assert (ckpt.config.pooling, ckpt.config.normalize) == ("mean", True)
    assert (ckpt.config.hidden_size, ckpt.config.num_layers, ckpt.config.num_heads) == (384, 6, 12)


def test_bundled_name_and_local_hf_cache_id_resolve(tmp_path, monkeypatch, gpt2_dir, minilm_dir):
    assert load_checkpoint("all-MiniLM-L6-v2").directory == minilm_dir

    # A model id resolves through the local Hugging Face cache layout, never the network.
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-gpt2" / "snapshots" / "abc123"
    shutil.copytree(gpt2_dir, snapshot)
    (cache / "models--acme--tiny-gpt2" / "refs").mkdir()
    (cache / "models--acme--tiny-gpt2" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    ckpt = load_checkpoint("acme/tiny-gpt2")
    assert ckpt.directory == snapshot
    assert json.loads((snapshot / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.parametrize("factory", [make_gpt2, make_bert, make_distilbert])
def test_fp16_checkpoints_keep_their_dtype_until_the_model_casts(tmp_path, factory):
    from transformers import AutoModel

    directory = factory(tmp_path / "src")
    AutoModel.from_pretrained(directory).half().save_pretrained(tmp_path / "half")
    ckpt = load_checkpoint(tmp_path / "half")
    assert {t.dtype for t in ckpt.weights.values()} == {torch.float16}
