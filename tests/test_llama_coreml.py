"""Core ML packages of the Llama family in fp16 (tests/llama_packages.py; the compressed ones in
test_llama_coreml_compressed.py), checked on Linux: each package runs through the numpy evaluator of its ML
program against transformers, and through the static ANE rules; their interface, tokenizer, weights, RoPE
tables and cache; and the refusals of bad checkpoints and options."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from canonical.errors import CheckpointError, ConversionError, InputError
from convert.checkpoint import load_checkpoint
from convert.coreml import IOS_WEIGHT_LIMIT, CoreMLOptions, check_size, convert_to_coreml, estimated_weight_bytes
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from coreml_runtime.package import read_metadata, weights_path
from ondevice.backends.coreml import load_package
from ondevice.cli import app
from ondevice.verify import verify_package
from tests.llama_packages import (
    CONTEXT,
    PREFILL,
    STATE,
    VARIANTS,
    check_matches_transformers,
    check_no_ane_rule_violations_in_prefill,
    checkpoint_maker,
    package_maker,
)

PLAIN = [name for name, (_, options) in VARIANTS.items() if options.compress == "none"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return checkpoint_maker(tmp_path_factory.mktemp("llama-coreml"))


@pytest.fixture(scope="module")
def packages(tmp_path_factory, checkpoints):
    return package_maker(tmp_path_factory.mktemp("llama-packages"), checkpoints)


@pytest.mark.parametrize("name", PLAIN)
def test_package_matches_transformers(packages, name):
    check_matches_transformers(packages, name)


@pytest.mark.parametrize("name", PLAIN)
def test_no_ane_rule_violations_in_prefill(packages, name):
    check_no_ane_rule_violations_in_prefill(packages, name)


def test_interface_tokenizer_and_metadata(packages):
    """The same interface as GPT-2's packages; the tokenizer inside; the Llama config round-trips."""
    from tokenizers import Tokenizer

    package, checkpoint = packages("llama-state-fp16")
    meta = read_metadata(package)
    assert meta["architecture"] == "llama" and meta["functions"] == "prefill,decode" and meta["kv_cache"] == "state"
    interface = json.loads(meta["interface"])
    assert interface["prefill"]["inputs"] == ["input_ids", "position"]
    assert interface["decode"]["states"] == ["key_cache", "value_cache"]
    assert interface["prefill"]["outputs"] == ["logits_0"]
    report = inspect_package(package)
    # The cache holds the 2 key/value heads of 8 channels only (GQA), not the 6 query heads.
    assert str(report.functions["decode"].states[0]) == f"key_cache [2, 16, 1, {CONTEXT}] fp16"
    lm = load_package(package)
    assert lm.config == load_checkpoint(checkpoint).config and lm.config.num_kv_heads == 2
    files = json.loads(meta["tokenizer_files"])
    tokenizer_json = next(package / f for f in files if f.endswith("tokenizer.json"))
    assert Tokenizer.from_file(str(tokenizer_json)).encode("the red cat").ids == [3, 8, 11]


def test_io_packages_take_enumerated_lengths(packages):
    """iOS 16/17: one function, the cache as inputs and outputs, input_ids of 1 or PREFILL tokens."""
    package, _ = packages("llama3-rope-io-ios17")
    interface = json.loads(read_metadata(package)["interface"])["main"]
    assert interface["inputs"] == ["input_ids", "position", "key_cache", "value_cache"]
    assert interface["outputs"] == ["logits_0", "key_cache_out", "value_cache_out"]
    spec = MilProgram(package).spec.description.input[0].type.multiArrayType
    assert sorted(tuple(s.shape) for s in spec.enumeratedShapes.shapes) == [(1, 1), (1, PREFILL)]


def test_wide_tied_vocabulary_is_two_chunks_sharing_one_table(packages):
    """Rule 7 with a tied head: 20,000 tokens come out as logits_0 (16,384) and logits_1 (3,616), and each chunk's
    constant feeds both the embedding gather and the head's matmul."""
    package, _ = packages("qwen3-tied-wide-state-fp16")
    outputs = inspect_package(package).functions["prefill"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    program = MilProgram(package)
    for fn in program.functions.values():
        tables = [op for op in fn.operations if op.op_type == "const" and "lm_head" in op.name]
        assert [op.outputs[0].shape for op in tables] == [(16384, 48), (3616, 48)]
        for op in tables:
            assert {child.op_type for child in op.outputs[0].child_ops} == {"gather", "matmul"}


@pytest.mark.parametrize("name", ["qwen2-tied-state-fp16", "qwen3-tied-wide-state-fp16", "llama-state-fp16"])
def test_weights_are_stored_once(packages, name):
    """weight.bin within 10% of the parameters (a tied table once) at 2 bytes each: the prefill and decode
    functions share one copy, and a tied head is the embedding's constant."""
    package, checkpoint = packages(name)
    ckpt = load_checkpoint(checkpoint)
    tied = ckpt.config.tie_word_embeddings
    params = sum(t.numel() for n, t in ckpt.weights.items() if not (tied and n == "lm_head.weight"))
    size = weights_path(package).stat().st_size
    print(f"{name}: weight.bin {size} bytes for {params} parameters ({size / (2 * params):.3f} x 2 bytes)")
    assert abs(size - 2 * params) <= 0.1 * 2 * params, (size, params)
    assert estimated_weight_bytes(ckpt.config, ckpt.weights, "fp16", "none") == pytest.approx(size, rel=0.1)


def test_rope_tables_hold_the_context_only(packages):
    """The RoPE tables span max_positions (160) in the model; the package keeps its CONTEXT rows."""
    package, _ = packages("llama3-rope-state-fp16")
    program = MilProgram(package)
    shapes = {
        op.outputs[0].shape
        for op in program.functions["prefill"].operations
        if op.op_type == "const" and "rotary" in op.name
    }
    assert shapes == {(8, CONTEXT)}, shapes


def test_state_persists_and_rewinds(packages):
    package, _ = packages("mistral-state-fp16")
    lm = load_package(package)
    lm.prefill([5, 6, 7])
    after_prompt = lm.decode(8)
    lm.trim(0)
    assert np.abs(after_prompt - lm.prefill([8])[0]).max() > 1e-2  # decode read the cache the prefill wrote
    lm.trim(0)
    lm.prefill([5, 6, 7, 9])
    lm.trim(3)
    np.testing.assert_array_equal(lm.decode(8), after_prompt)


def test_prefill_near_the_end_of_the_context_stays_in_the_tables(packages):
    """A padded prefill chunk must not reach past the package's RoPE rows: near the end it goes token by token."""
    package, checkpoint = packages("llama-state-fp16")
    from ondevice.reference import load_reference

    lm, reference = load_package(package), load_reference(load_checkpoint(checkpoint))
    ids = np.random.default_rng(1).integers(0, 211, size=CONTEXT - 3).tolist()
    got, want = lm.prefill(ids), reference.prefill(ids)
    assert got.shape == want.shape
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= 0.999


# ---- refusals: one line, nothing written ----


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def _one_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_mismatched_shapes_are_refused(checkpoints, tmp_path):
    """config.json and the weights disagree (hidden size): refused while reading, one line, exit 2, nothing
    written; a package verified against a reference of another vocabulary: refused likewise."""
    import shutil

    source = checkpoints("llama")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 72
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="intermediate_size"):
        convert_to_coreml(broken, out / "x.mlpackage", STATE, progress=False)
    line = _one_line(
        CliRunner().invoke(app, ["convert", str(broken), "--to", "coreml", "--out", str(out / "x.mlpackage")])
    )
    assert "intermediate_size" in line
    assert _listing(out) == []


def test_package_against_a_mismatched_reference(packages, checkpoints):
    package, _ = packages("qwen3-tied-wide-state-fp16")
    with pytest.raises(InputError, match="does not match the reference"):
        verify_package(str(package), str(checkpoints("llama")))
    line = _one_line(CliRunner().invoke(app, ["verify", str(package), "--reference", str(checkpoints("llama"))]))
    assert "does not match" in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CoreMLOptions(context=500), "context 500 must be in 2..160"),
        (CoreMLOptions(context=32, seq_lens=(64,)), "prefill length 64 exceeds the context of 32"),
        (CoreMLOptions(target="iOS17"), "KV cache 'state' needs iOS18/macOS15"),
        (CoreMLOptions(target="iOS17", kv_cache="io", compress="int4"), "int4 per-block quantization needs iOS18"),
        (CoreMLOptions(compress="int8", calibration_text=__file__), "calibration text applies to causal LMs"),
    ],
)
def test_bad_options_are_refused_before_writing(checkpoints, tmp_path, options, message):
    with pytest.raises(ConversionError, match=message.replace("(", r"\(")):
        convert_to_coreml(checkpoints("llama"), tmp_path / "out.mlpackage", options, progress=False)
    assert _listing(tmp_path) == []


def test_large_ios_package_is_refused_unless_allowed(checkpoints, tmp_path, monkeypatch):
    """Above the limit an iOS package is refused in one line naming its size and the compression that fits;
    --allow-large or a macOS target writes it. The limit is lowered to the tiny model's scale here."""
    import convert.coreml as coreml

    ckpt = load_checkpoint(checkpoints("qwen3-tied-wide"))
    fp16 = estimated_weight_bytes(ckpt.config, ckpt.weights, "fp16", "none")
    int8 = estimated_weight_bytes(ckpt.config, ckpt.weights, "fp16", "int8")
    limit = (fp16 + int8) // 2  # fp16 does not fit, int8 does
    with pytest.raises(ConversionError) as excinfo:
        check_size(ckpt.config, ckpt.weights, STATE, limit=limit)
    message = str(excinfo.value)
    assert len(message.splitlines()) == 1
    assert f"about {fp16 / 1e9:.2f} GB (fp16)" in message and "--allow-large" in message
    assert f"--compress int8 would make them about {int8 / 1e9:.2f} GB" in message
    check_size(ckpt.config, ckpt.weights, dataclasses.replace(STATE, allow_large=True), limit=limit)
    check_size(ckpt.config, ckpt.weights, dataclasses.replace(STATE, target="macOS15"), limit=limit)
    check_size(ckpt.config, ckpt.weights, dataclasses.replace(STATE, compress="int8"), limit=limit)
    monkeypatch.setattr(coreml, "IOS_WEIGHT_LIMIT", limit)
    with pytest.raises(ConversionError, match="--allow-large"):
        convert_to_coreml(ckpt, tmp_path / "big.mlpackage", STATE, progress=False)
    assert _listing(tmp_path) == []


def test_weight_estimate_at_realistic_scale():
    """The planner's arithmetic for the shapes of SmolLM2-135M and Qwen3-0.6B (tied: the table counted once),
    on meta tensors: nothing is allocated or written."""
    from ane_model.llama import LlamaModel
    from canonical.llama import LlamaConfig

    def weights(**shape):
        cfg = LlamaConfig(max_positions=8192, rms_norm_eps=1e-6, tie_word_embeddings=True, **shape)
        with torch.device("meta"):
            return cfg, LlamaModel(cfg).state_dict()

    smollm = weights(
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        intermediate_size=1536,
    )
    qwen = weights(
        vocab_size=151936,
        hidden_size=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=3072,
        qk_norm=True,
    )
    params = {name: sum(t.numel() for t in w.values()) for name, (_, w) in (("smollm", smollm), ("qwen", qwen))}
    assert params["smollm"] == 134_515_008 and params["qwen"] == 596_049_920
    assert estimated_weight_bytes(*smollm, "fp16", "none") == 2 * params["smollm"]  # 269 MB: fits
    check_size(*smollm, STATE)
    with pytest.raises(ConversionError, match=r"about 1\.19 GB \(fp16\).*--compress int8 would make them about 0\.60"):
        check_size(*qwen, STATE)
    assert IOS_WEIGHT_LIMIT == 1_000_000_000
