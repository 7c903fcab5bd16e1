"""Core ML packages of every registered family, uncompressed (tests/packages.py; the compressed ones in
test_coreml_compressed.py), checked on Linux: each written package runs through the numpy evaluator of its ML
program against the transformers reference and through the static ANE rules; its interface, metadata, tokenizer,
weights stored once, state that persists and rewinds, and the runtime without torch. Then what is one family's:
GPT-2's and MiniLM's metadata, the Llama family's RoPE tables, enumerated io lengths and wide tied vocabulary."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convert.checkpoint import load_checkpoint
from convert.coreml import CoreMLOptions, convert_to_coreml, estimated_weight_bytes
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from coreml_runtime.package import read_metadata, sha256_file, weights_path
from ondevice.backends.coreml import load_package
from ondevice.cli import app
from ondevice.verify import verify_package
from tests.packages import (
    CONTEXT,
    PREFILL,
    SEQ,
    check_ane_rules,
    check_fast_path_writes_the_plain_package,
    check_matches_reference,
    check_same_package,
    multifunction,
    package_maker,
    variants,
)

PLAIN = variants(compressed=False)
CAUSAL_STATE = [name for name, v in PLAIN.items() if v.options.kv_cache == "state" and v.family != "bert"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, request, family_root):
    return package_maker(tmp_path_factory.mktemp("coreml"), request, family_root)


def _causal(packages, name: str) -> bool:
    return load_checkpoint(packages(name)[1]).config.is_causal


@pytest.mark.parametrize("name", list(PLAIN))
def test_package_matches_reference(packages, name):
    check_matches_reference(packages, name)


@pytest.mark.parametrize("name", list(PLAIN))
def test_ane_rules(packages, name):
    check_ane_rules(packages, name)


@pytest.mark.parametrize("name", list(PLAIN))
def test_interface_and_metadata_say_what_the_package_is(packages, name):
    """The names an app binds to, the cache shape (key/value heads only), the config round-trip, one sha256 per
    source weight file (as `sha256sum FILE` prints it), the weights' own sha256, the tokenizer inside."""
    from tokenizers import Tokenizer

    package, checkpoint = packages(name)
    options = PLAIN[name].options
    ckpt = load_checkpoint(checkpoint)
    meta = read_metadata(package)
    interface = json.loads(meta["interface"])
    assert meta["architecture"] == ckpt.model_type and meta["precision"] == options.dtype
    assert meta["weights_sha256"] == sha256_file(weights_path(package))
    assert json.loads(meta["source_weights_sha256"]) == {
        p.name: sha256_file(p) for p in sorted(checkpoint.glob("*.safetensors"))
    }
    assert load_package(package).config == ckpt.config
    if _causal(packages, name):
        cfg = ckpt.config
        chunks = [f"logits_{j}" for j in range(-(-cfg.vocab_size // 16384))]
        assert meta["kv_cache"] == options.kv_cache and meta["context"] == str(CONTEXT)
        function = "decode" if multifunction(options) else "main"
        assert meta["functions"] == ("prefill,decode" if multifunction(options) else "main")
        caches = _expected_caches(cfg)
        cache = str(list(caches["key_cache"]))
        assert interface[function]["cache_shapes"] == {name: list(shape) for name, shape in caches.items()}
        report = inspect_package(package).functions[function]
        if options.kv_cache == "state":
            assert interface[function]["inputs"] == ["input_ids", "position"]
            assert interface[function]["outputs"] == chunks
            assert interface[function]["states"] == list(caches)
            assert str(report.states[0]) == f"key_cache {cache} fp16"  # state is fp16 whatever the package's dtype
        else:
            assert interface[function]["inputs"] == ["input_ids", "position", *caches]
            assert interface[function]["outputs"] == [*chunks, *(f"{name}_out" for name in caches)]
            assert str(report.inputs[2]).startswith(f"key_cache {cache}")
    files = json.loads(meta["tokenizer_files"])
    assert all((package / f).is_file() for f in files)
    if (checkpoint / "tokenizer.json").is_file():
        inside = Tokenizer.from_file(str(package / next(f for f in files if f.endswith("tokenizer.json"))))
        assert inside.encode("the quick brown fox").ids == Tokenizer.from_file(
            str(checkpoint / "tokenizer.json")).encode("the quick brown fox").ids  # fmt: skip


def _expected_caches(cfg) -> dict[str, tuple[int, ...]]:
    """Every layer's keys and values over the context; Gemma 3's sliding layers in a ring of window + prefill slots
    instead (where that is shorter than the context), its global layers over the context."""
    sliding = sum(getattr(cfg, "sliding_layers", ()))
    ring = getattr(cfg, "sliding_window", CONTEXT) + PREFILL
    if not sliding or sliding == cfg.num_layers or ring >= CONTEXT:
        full = (cfg.num_layers, cfg.kv_width, 1, CONTEXT)
        return {"key_cache": full, "value_cache": full}
    full, window = (cfg.num_layers - sliding, cfg.kv_width, 1, CONTEXT), (sliding, cfg.kv_width, 1, ring)
    return {"key_cache": full, "value_cache": full, "key_window_cache": window, "value_window_cache": window}


def test_a_window_cache_rewinds_further_than_its_ring_holds(packages):
    """Gemma 3's sliding layers keep a ring of window + prefill slots, and every call writes a whole prefill's slots
    (padding included): a rewind keeps the cache back to the start of the last padded write; a longer one starts over
    and reads the kept prefix again, which gives the logits of a fresh run (without that, the ring holds later tokens,
    real or padding, where earlier ones belong, and the logits differ)."""
    package = packages("gemma3-state-fp16")[0]
    ids = np.random.default_rng(3).integers(0, 256, size=70).tolist()  # 70 tokens: the ring of 32 wraps twice
    fresh = load_package(package)
    want = {}
    for length in (20, 60, 64):
        fresh.trim(0)
        fresh.prefill(ids[:length])
        want[length] = fresh.decode(7)
    lm = load_package(package)
    lm.prefill(ids)  # the last call writes positions 64..79, six of them real
    assert lm.rewindable == 70 - 64
    lm.trim(64)  # within the ring: kept
    assert lm.length == 64 and lm.rewindable == 0
    np.testing.assert_array_equal(lm.decode(7), want[64])
    for length in (60, 20):  # past it: read again
        lm.trim(length)
        np.testing.assert_array_equal(lm.decode(7), want[length])
    lm.trim(0)
    lm.prefill(ids)
    lm._ring_slack = None  # what a plain rewind would give: the padding of positions 70..79 replaced 38..47
    lm.trim(60)
    assert np.abs(lm.decode(7) - want[60]).max() > 1e-2


@pytest.mark.parametrize("name", CAUSAL_STATE)
def test_weights_are_stored_once(packages, name):
    """weight.bin within 10% of the parameters (a tied table once) at 2 bytes each: the prefill and decode functions
    share one copy, and a tied head is the embedding's constant (GPT-2's (211, 64) table was stored twice before)."""
    package, checkpoint = packages(name)
    ckpt = load_checkpoint(checkpoint)
    tied = getattr(ckpt.config, "tie_word_embeddings", False)
    params = sum(t.numel() for n, t in ckpt.weights.items() if not (tied and n == "lm_head.weight"))
    size = weights_path(package).stat().st_size
    assert abs(size - 2 * params) <= 0.1 * 2 * params, (size, params)
    assert estimated_weight_bytes(ckpt.config, ckpt.weights, "fp16", "none") == pytest.approx(size, rel=0.1)


@pytest.mark.parametrize("name", CAUSAL_STATE)
def test_state_persists_and_rewinds(packages, name):
    """Decode after prefill reads the cache the prefill wrote: without it the logits differ; rewinding and decoding a
    token again gives the logits as if what was rewound had never been seen."""
    lm = load_package(packages(name)[0])
    lm.prefill([5, 6, 7])
    after_prompt = lm.decode(8)
    lm.trim(0)
    assert np.abs(after_prompt - lm.prefill([8])[0]).max() > 1e-2
    lm.trim(0)
    lm.prefill([5, 6, 7, 9])
    lm.trim(3)
    np.testing.assert_array_equal(lm.decode(8), after_prompt)


@pytest.mark.parametrize("name", ["gpt2-state-fp16", "minilm"])
def test_fast_path_writes_the_plain_package(packages, name, tmp_path):
    check_fast_path_writes_the_plain_package(packages, name, tmp_path)


def test_prefill_and_decode_converted_side_by_side_are_the_same_package(packages, tmp_path):
    """Decode converted in a forked process while this one converts prefill (the CLI's default where it is safe and
    pays) writes the package that converting one after the other writes."""
    from convert import coreml_parallel

    serial, checkpoint = packages("qwen3-tied-wide-state-fp16")
    reason = coreml_parallel.why_not_parallel(0)
    if reason is not None:
        pytest.skip(f"no side-by-side conversion here: {reason}")
    options = dataclasses.replace(variants()["qwen3-tied-wide-state-fp16"].options, parallel=True)
    with pytest.MonkeyPatch.context() as patch:
        forked = []
        patch.setattr(coreml_parallel.ForkedConversion, "result",
                      _recorded(coreml_parallel.ForkedConversion.result, forked))  # fmt: skip
        side_by_side = convert_to_coreml(checkpoint, tmp_path / "side-by-side.mlpackage", options, progress=False)
    assert len(forked) == 1  # decode did come from the forked process
    check_same_package(side_by_side, serial)


def _recorded(method, calls: list):
    def recording(self):
        calls.append(self.path)
        return method(self)

    return recording


def test_a_package_runs_without_torch(packages):
    """The Core ML runtime (coreml_runtime/, ondevice/backends/coreml.py) needs the package alone: with torch made
    unimportable, the package still loads and evaluates to the logits it gives with torch present."""
    import io
    import subprocess
    import sys

    package, _ = packages("gpt2-state-fp16")
    expected = load_package(package).prefill([5, 7, 11])
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from ondevice.backends.coreml import load_package\n"
        f"logits = load_package({str(package)!r}).prefill([5, 7, 11])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "np.save(sys.stdout.buffer, logits)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert np.array_equal(np.load(io.BytesIO(out.stdout)), expected)


def test_cli_inspect_and_verify(packages):
    package, checkpoint = packages("gpt2-state-fp16")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(package)])
    assert result.exit_code == 0, result.output
    assert "function prefill" in result.output and "state  key_cache [2, 64, 1, 96] fp16" in result.output
    assert "size-1 last axis" in result.output  # decode's, reported, not hidden
    assert "compute plan skipped" in result.output or "compute plan:" in result.output
    result = runner.invoke(app, ["verify", str(package), "--reference", str(checkpoint), "--seq-len", str(SEQ)])
    assert result.exit_code == 0, result.output
    assert "greedy tokens: 16/16" in result.output and "PASS" in result.output


# --- one family's ---------------------------------------------------------------------------------------------


def test_gpt2_prefill_function_takes_its_chunk_and_the_blob_holds_one_model(packages):
    package, _ = packages("gpt2-state-fp16")
    assert read_metadata(package)["seq_lens"] == str(PREFILL)
    report = inspect_package(package)
    assert [str(f) for f in report.functions["prefill"].inputs] == ["input_ids [1, 16] int32", "position [1] int32"]
    params = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 211 * 64 + 160 * 64
    assert report.weight_bytes["float16"] < 1.1 * 2 * params


def test_a_large_head_is_split_into_outputs(tmp_path):
    """Rule 7: a vocabulary above 16384 comes out as chunks, none wider than the ANE's limit."""
    from tests.checkpoints import make_gpt2

    ckpt = make_gpt2(tmp_path / "wide", n_layer=1, n_embd=32, n_head=2, vocab_size=20000, n_positions=32)
    package = convert_to_coreml(ckpt, tmp_path / "wide.mlpackage", CoreMLOptions(context=16, seq_lens=(4,)),
                                progress=False)  # fmt: skip
    outputs = inspect_package(package).functions["decode"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    report = verify_package(str(package), str(ckpt), seq_len=8, greedy_steps=8)
    assert report.passed, report.comparisons


def test_minilm_package_carries_its_tokenizer_and_pooling(packages):
    package, _ = packages("minilm")
    meta = read_metadata(package)
    files = json.loads(meta["tokenizer_files"])
    assert any(f.endswith("tokenizer.json") for f in files)
    assert "sentence_embedding" in json.loads(meta["interface"])["main"]["outputs"]
    assert json.loads((package / "Manifest.json").read_text())["itemInfoEntries"]  # items registered
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package / next(f for f in files if f.endswith("tokenizer.json"))))
    assert tok.encode("hello world").ids


def test_llama_io_packages_take_enumerated_lengths(packages):
    """iOS 16/17: one function, the cache as inputs and outputs, input_ids of 1 or PREFILL tokens."""
    package, _ = packages("llama3-rope-io-ios17")
    spec = MilProgram(package).spec.description.input[0].type.multiArrayType
    assert sorted(tuple(s.shape) for s in spec.enumeratedShapes.shapes) == [(1, 1), (1, PREFILL)]


def test_a_wide_tied_vocabulary_is_two_chunks_sharing_one_table(packages):
    """Rule 7 with a tied head: 20,000 tokens come out as logits_0 (16,384) and logits_1 (3,616), and each chunk's
    constant feeds both the embedding gather and the head's matmul."""
    package, _ = packages("qwen3-tied-wide-state-fp16")
    outputs = inspect_package(package).functions["prefill"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    for fn in MilProgram(package).functions.values():
        tables = [op for op in fn.operations if op.op_type == "const" and "lm_head" in op.name]
        assert [op.outputs[0].shape for op in tables] == [(16384, 48), (3616, 48)]
        for op in tables:
            assert {child.op_type for child in op.outputs[0].child_ops} == {"gather", "matmul"}


def test_rope_tables_hold_the_context_only(packages):
    """The RoPE tables span max_positions (160) in the model; the package keeps its CONTEXT rows."""
    package, _ = packages("llama3-rope-state-fp16")
    shapes = {op.outputs[0].shape for op in MilProgram(package).functions["prefill"].operations
              if op.op_type == "const" and "rotary" in op.name}  # fmt: skip
    assert shapes == {(8, CONTEXT)}, shapes


def test_prefill_near_the_end_of_the_context_stays_in_the_tables(packages):
    """A padded prefill chunk must not reach past the package's RoPE rows: near the end it goes token by token."""
    from ondevice.reference import load_reference

    package, checkpoint = packages("llama-state-fp16")
    lm, reference = load_package(package), load_reference(load_checkpoint(checkpoint))
    ids = np.random.default_rng(1).integers(0, 211, size=CONTEXT - 3).tolist()
    got, want = lm.prefill(ids), reference.prefill(ids)
    assert got.shape == want.shape
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= 0.999


def test_the_evaluator_holds_each_weight_once_and_within_its_float32_budget(packages, monkeypatch):
    """At billions of parameters the evaluator must not hold a copy of every weight per function plus a float32 copy
    of each: identical constants of prefill and decode are one array (the loader's second copy let go), and float32
    copies are kept only within FLOAT32_CACHE_BYTES. Neither changes an output: the logits with every constant shared
    and no float32 cache at all are those of the default, bit for bit, through prefill and decode."""
    from coreml_runtime import mil_eval
    from tests.packages import prefill_then_decode

    package, _ = packages("qwen2-tied-state-fp16")
    _, expected = prefill_then_decode(package)
    monkeypatch.setattr(mil_eval, "SHARED_CONSTANT", 1024)
    monkeypatch.setattr(mil_eval, "FLOAT32_CACHE_BYTES", 0)
    program, got = prefill_then_decode(package)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    large = [v for v in program._consts.values() if v.size >= 1024]
    distinct = {id(v) for v in large}
    assert len(large) > len(distinct) > 0  # prefill's and decode's weights: one array each
    assert not any(program._float32.values()) and program._held == [0]
    for function in ("prefill", "decode"):  # the loader's own copies are the shared arrays now
        for op in program.functions[function].find_ops(op_type="const"):
            if id(op) in program._consts and program._consts[id(op)].size >= 1024:
                assert op.outputs[0].val is program._consts[id(op)]
