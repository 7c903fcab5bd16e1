"""Parity of the ANE-layout torch models with the transformers CPU reference (the contract).

Bounds come from `ondevice.parity.TOLERANCES`: fp32 max-abs error <= 1e-4 of the output's scale and
cosine >= 0.99999; fp16 <= 2e-2 of scale and cosine >= 0.999 (justified there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ane_model.cpu_fused import FusedAttention, FusedConv1x1, FusedLayerNorm, fuse_for_cpu
from ane_model.kv_cache import KVCache
from convert.checkpoint import load_checkpoint
from convert.registry import build_ane_model as build_model
from ondevice.backends.torch_ane import TorchCausalLM, TorchEncoder
from ondevice.parity import TOLERANCES, compare, greedy_agreement
from ondevice.reference import ReferenceCausalLM, ReferenceEncoder
from ondevice.runtime import greedy_tokens
from tests.checkpoints import make_bert, make_distilbert, make_gpt2

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]

GPT2_SHAPES = {
    "base": {},
    "5 heads of width 40, exact gelu, n_inner 300": dict(n_head=5, n_embd=200, n_inner=300, activation_function="gelu"),
    "3 layers, untied head, relu": dict(n_layer=3, tie_word_embeddings=False, activation_function="relu"),
}
BERT_SHAPES = {
    "bert": (make_bert, {}),
    "bert, 5 heads of width 40, pooler": (make_bert, dict(num_attention_heads=5, hidden_size=200, head="pooler")),
    "distilbert": (make_distilbert, {}),
    "distilbert, 5 heads of width 40": (make_distilbert, dict(n_heads=5, dim=200)),
}


@pytest.fixture(scope="module", params=list(GPT2_SHAPES), ids=list(GPT2_SHAPES))
def gpt2(request, tmp_path_factory):
    ckpt = load_checkpoint(make_gpt2(tmp_path_factory.mktemp("gpt2"), seed=1, **GPT2_SHAPES[request.param]))
    return ckpt, ReferenceCausalLM(ckpt)


@pytest.fixture(scope="module", params=list(BERT_SHAPES), ids=list(BERT_SHAPES))
def encoder(request, tmp_path_factory):
    factory, overrides = BERT_SHAPES[request.param]
    ckpt = load_checkpoint(factory(tmp_path_factory.mktemp("enc"), seed=2, **overrides))
    return ckpt, ReferenceEncoder(ckpt)


def _ids(vocab: int, length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


@pytest.mark.parametrize("seq_len", [1, 7, 128])
def test_gpt2_logits_match_reference_fp32(gpt2, seq_len):
    ckpt, reference = gpt2
    ids = _ids(ckpt.config.vocab_size, seq_len)
    ours = TorchCausalLM(ckpt.config, ckpt.weights)
    reference.trim(0)
    result = compare("logits", ours.prefill(ids), reference.prefill(ids))
    assert result.within(FP32), result


def test_gpt2_prefill_then_decode_equals_one_full_forward(gpt2):
    ckpt, _ = gpt2
    model = build_model(ckpt.config, ckpt.weights)
    ids = torch.tensor([_ids(ckpt.config.vocab_size, 40, seed=5)])
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(ckpt.config.num_layers, ckpt.config.hidden_size, capacity=64)
        pieces = [model(ids[:, :25], cache)] + [model(ids[:, t : t + 1], cache) for t in range(25, 40)]
    stepwise = torch.cat(pieces, dim=-1)
    assert cache.length == 40
    # Same weights, same fp32 math, different summation order only: 1e-5 of scale is tight.
    assert (stepwise - full).abs().max() <= 1e-5 * full.abs().max()


def test_gpt2_32_greedy_tokens_match_reference_exactly(gpt2):
    ckpt, reference = gpt2
    prompt = _ids(ckpt.config.vocab_size, 12, seed=9)
    ours = greedy_tokens(TorchCausalLM(ckpt.config, ckpt.weights), prompt, 32)
    theirs = greedy_tokens(reference, prompt, 32)
    assert ours == theirs
    assert len(set(theirs)) >= 4, "a degenerate continuation would make this test vacuous"


def test_gpt2_cache_trim_rewinds_to_a_prefix(gpt2):
    ckpt, _ = gpt2
    ids = _ids(ckpt.config.vocab_size, 20, seed=4)
    fresh = TorchCausalLM(ckpt.config, ckpt.weights, capacity=64)
    fresh.prefill(ids[:12])
    expected = fresh.prefill(ids[12:])

    lm = TorchCausalLM(ckpt.config, ckpt.weights, capacity=64)
    lm.prefill(ids[:12])
    lm.prefill(_ids(ckpt.config.vocab_size, 5, seed=77))  # decode a different continuation ...
    lm.trim(12)  # ... rewind it, and continue as the fresh run did: the same computation, bit for bit
    np.testing.assert_array_equal(lm.prefill(ids[12:]), expected)


def test_gpt2_fp16_within_stated_bounds(gpt2):
    ckpt, reference = gpt2
    ids = _ids(ckpt.config.vocab_size, 64, seed=3)
    reference.trim(0)
    result = compare(
        "logits", TorchCausalLM(ckpt.config, ckpt.weights, dtype="fp16").prefill(ids), reference.prefill(ids)
    )
    assert result.within(FP16), result
    # Greedy along the reference's path: every step agrees except where the reference's top two logits are
    # closer than one fp16 spacing. Measured: 32/32 on two shapes; on the 5-head shape step 16 has a margin
    # of 0.0005 at logits of 6.5 (fp16 spacing 0.0039), which fp16 cannot resolve: 31/32 and one tie.
    prompt = _ids(ckpt.config.vocab_size, 12, seed=9)
    agreement = greedy_agreement(TorchCausalLM(ckpt.config, ckpt.weights, dtype="fp16"), reference, prompt, 32)
    assert agreement.clear_misses == 0 and agreement.ties <= 1, agreement


def _fused_and_plain(ckpt):
    plain, fused = build_model(ckpt.config, ckpt.weights), fuse_for_cpu(build_model(ckpt.config, ckpt.weights))
    kinds = {type(m) for m in fused.modules()}
    assert {FusedAttention, FusedConv1x1, FusedLayerNorm} <= kinds  # the fused forms are the ones that run
    return plain, fused


def test_cpu_fused_gpt2_equals_the_ane_layout_it_runs(gpt2):
    """The torch backend runs the ANE-layout modules through fused CPU kernels (ane_model/cpu_fused.py):
    the same function to fp32 rounding, for a batch of 3 and through the KV cache."""
    ckpt, _ = gpt2
    plain, fused = _fused_and_plain(ckpt)
    ids = torch.tensor([_ids(ckpt.config.vocab_size, 20, seed=s) for s in range(3)])
    with torch.inference_mode():
        result = compare("logits", fused(ids).numpy(), plain(ids).numpy())
        cache = KVCache(ckpt.config.num_layers, ckpt.config.hidden_size, 20, batch=3)
        stepped = torch.cat([fused(ids[:, :12], cache)] + [fused(ids[:, t : t + 1], cache) for t in range(12, 20)], -1)
    assert result.within(FP32), result
    assert compare("cached", stepped.numpy(), plain(ids).detach().numpy()).within(FP32)


def test_branch_logits_equal_one_continuation_at_a_time(gpt2):
    ckpt, _ = gpt2
    lm = TorchCausalLM(ckpt.config, ckpt.weights)
    context = _ids(ckpt.config.vocab_size, 30, seed=6)
    continuations = [_ids(ckpt.config.vocab_size, 3, seed=s) for s in range(5)]
    lm.prefill(context)
    batched = lm.branch_logits(continuations)
    assert lm.length == 30  # the batch left the cache as it was
    one_by_one = []
    for continuation in continuations:
        one_by_one.append(lm.prefill(continuation)[-1])
        lm.trim(30)
    assert compare("branch", batched, np.stack(one_by_one)).within(FP32)


def test_branches_on_remembered_parents_equal_whole_continuations(gpt2):
    """The word search extends beams one token at a time: a deeper branch runs its last token on top of
    its parent's remembered keys and values, and must give the logits of running the whole continuation."""
    ckpt, _ = gpt2
    lm = TorchCausalLM(ckpt.config, ckpt.weights)
    lm.prefill(_ids(ckpt.config.vocab_size, 25, seed=7))
    paths = [_ids(ckpt.config.vocab_size, 3, seed=s) for s in range(4)]
    for depth in (1, 2, 3):
        lm.branch_logits([p[:depth] for p in paths])  # parents, then children on top of them
    stepped = lm.branch_logits([p[:3] for p in paths])
    lm.branches.forget()
    whole = lm.branch_logits([p[:3] for p in paths])
    one_by_one = []
    for path in paths:
        one_by_one.append(lm.prefill(path)[-1])
        lm.trim(25)
    assert compare("stepped", stepped, np.stack(one_by_one)).within(FP32)
    assert compare("whole", whole, np.stack(one_by_one)).within(FP32)


def test_adopting_a_branch_equals_prefilling_it(gpt2):
    """When typed text turns a scored branch into context, its keys and values move into the cache: the
    next logits must be those of prefilling the same tokens; a branch from before the cache changed is
    never adopted."""
    ckpt, _ = gpt2
    vocab = ckpt.config.vocab_size
    context, path, after = _ids(vocab, 20, seed=8), _ids(vocab, 2, seed=9), _ids(vocab, 3, seed=10)
    adopted, prefilled = TorchCausalLM(ckpt.config, ckpt.weights), TorchCausalLM(ckpt.config, ckpt.weights)
    adopted.prefill(context)
    adopted.branch_logits([path[:1]])
    adopted.branch_logits([path])
    assert adopted.adopt_branch(path) and adopted.length == 22
    prefilled.prefill(context + path)
    assert compare("after", adopted.prefill(after), prefilled.prefill(after)).within(FP32)

    adopted.trim(20)
    adopted.branch_logits([path])
    adopted.trim(19)
    adopted.prefill(after[:1])  # back to 20 tokens, but no longer the context the branch continued
    assert not adopted.adopt_branch(path) and adopted.length == 20


def _encoder_inputs(cfg, batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    if seq > 1:
        mask[-1, seq - max(1, seq // 3) :] = 0
    types = rng.integers(0, 2, size=(batch, seq)) if cfg.type_vocab_size > 1 else None
    return ids, mask, types


def _compare_encoders(ours, reference, ids, mask, types, tol):
    got, want = ours.encode(ids, mask, types), reference.encode(ids, mask, types)
    assert got.keys() == want.keys()
    valid = mask.astype(bool)
    results = []
    for name in want:
        a, b = (got[name][valid], want[name][valid]) if got[name].ndim == 3 else (got[name], want[name])
        results.append(compare(name, a, b))
    failed = [r for r in results if not r.within(tol)]
    assert not failed, failed
    return results


@pytest.mark.parametrize("seq_len", [1, 7, 128])
def test_encoder_outputs_match_reference_fp32(encoder, seq_len):
    ckpt, reference = encoder
    ids, mask, types = _encoder_inputs(ckpt.config, batch=3, seq=seq_len)
    results = _compare_encoders(TorchEncoder(ckpt.config, ckpt.weights), reference, ids, mask, types, FP32)
    names = {r.name for r in results}
    assert "hidden" in names
    assert ("mlm_logits" in names) == ckpt.config.has_mlm_head
    assert ("pooled" in names) == ckpt.config.has_pooler


def test_cpu_fused_encoder_equals_the_ane_layout_it_runs(encoder):
    ckpt, _ = encoder
    plain, fused = _fused_and_plain(ckpt)
    ids, mask, types = _encoder_inputs(ckpt.config, batch=3, seq=16, seed=2)
    args = [torch.as_tensor(ids), torch.as_tensor(mask), None if types is None else torch.as_tensor(types)]
    with torch.inference_mode():
        got, want = fused(*args), plain(*args)
    valid = torch.as_tensor(mask, dtype=torch.bool)
    for name in ("hidden", "mlm_logits"):
        if getattr(want, name) is not None:
            a, b = (getattr(out, name)[:, :, 0, :].transpose(1, 2)[valid] for out in (got, want))
            assert compare(name, a.numpy(), b.numpy()).within(FP32), name
    for name in ("pooled", "sentence_embedding"):
        if getattr(want, name) is not None:
            assert compare(name, getattr(got, name).numpy(), getattr(want, name).numpy()).within(FP32), name


def test_encoder_fp16_within_stated_bounds(encoder):
    ckpt, reference = encoder
    ids, mask, types = _encoder_inputs(ckpt.config, batch=2, seq=64, seed=1)
    _compare_encoders(TorchEncoder(ckpt.config, ckpt.weights, dtype="fp16"), reference, ids, mask, types, FP16)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_checkpoint(minilm_dir)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_real_minilm_matches_reference(minilm, dtype):
    ids, mask, _ = _encoder_inputs(minilm.config, batch=2, seq=128, seed=7)
    results = _compare_encoders(
        TorchEncoder(minilm.config, minilm.weights, dtype=dtype),
        ReferenceEncoder(minilm),
        ids,
        mask,
        None,
        TOLERANCES[dtype],
    )
    assert {r.name for r in results} == {"hidden", "pooled", "sentence_embedding"}


def test_real_minilm_embeds_real_text_like_sentence_transformers(minilm, minilm_dir):
    """An independent reference: sentence-transformers' own pipeline on real sentences."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = [
        "The cat sits on the mat.",
        "Neural Engines run transformers fast on a phone.",
        "A keyboard suggests the next word as you type, one keystroke at a time.",
    ]
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences, convert_to_numpy=True)
    batch = AutoTokenizer.from_pretrained(minilm_dir)(sentences, padding=True, return_tensors="np")
    got = TorchEncoder(minilm.config, minilm.weights).encode(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )["sentence_embedding"]
    result = compare("sentence_embedding", got, want)
    assert result.within(FP32), result
    similarity = got @ got.T
    assert similarity[0, 1] < similarity[1, 2]  # phone/keyboard sentences are closer than cat/Neural Engine
