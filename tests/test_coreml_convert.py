"""Core ML conversion, checked on Linux: each written package runs through the numpy evaluator of its
ML program against the transformers reference, and through the static ANE rules.

Each option value is converted once, on the tiniest models (not the cartesian product): a package
per row of VARIANTS, each built once per session. Bounds: fp16 packages must meet parity.TOLERANCES
["fp16"] (cosine >= 0.999, max error <= 2e-2 of the output's scale); fp32 packages with an io cache
meet the fp32 bound; compressed packages must keep greedy agreement and meet the bounds in
ondevice.verify.COMPRESSED_TOLERANCES, each set above the error measured here (stated per variant)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convert.coreml import CoreMLOptions, convert_to_coreml
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from coreml_runtime.package import read_metadata, sha256_file, weights_path
from ondevice.cli import app
from ondevice.parity import TOLERANCES
from ondevice.verify import COMPRESSED_TOLERANCES, verify_package

CONTEXT, PREFILL, SEQ = 96, 16, 32  # the greedy check needs SEQ + 16 steps <= CONTEXT

# name: (checkpoint fixture, options, constexpr op the compression must emit or None)
VARIANTS = {
    "gpt2-state-fp16": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,)), None),
    "gpt2-io-fp32-ios18": ("gpt2_dir", CoreMLOptions(dtype="fp32", kv_cache="io", context=CONTEXT,
                                                     seq_lens=(PREFILL,)), None),
    "gpt2-io-ios17-int8": ("gpt2_dir", CoreMLOptions(kv_cache="io", target="iOS17", context=CONTEXT,
                                                     seq_lens=(PREFILL,), compress="int8"),
                           "constexpr_affine_dequantize"),
    "gpt2-int8": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="int8"),
                  "constexpr_blockwise_shift_scale"),
    "gpt2-int4": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="int4"),
                  "constexpr_blockwise_shift_scale"),
    "gpt2-palettize4": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="palettize4"),
                        "constexpr_lut_to_dense"),
    "gpt2-palettize6": ("gpt2_dir", CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="palettize6",
                                                  target="macOS15"), "constexpr_lut_to_dense"),
    "bert-mlm-enumerated": ("bert_dir", CoreMLOptions(seq_lens=(16, SEQ)), None),
    "distilbert-mlm": ("distilbert_dir", CoreMLOptions(seq_lens=(SEQ,), target="iOS16"), None),
    "minilm": ("minilm_dir", CoreMLOptions(seq_lens=(SEQ,)), None),
    "minilm-palettize6-ios16": ("minilm_dir", CoreMLOptions(seq_lens=(SEQ,), target="iOS16", compress="palettize6"),
                                "constexpr_lut_to_dense"),
}


FOUR_BIT = {"gpt2-int4": 3, "gpt2-palettize4": 9}  # measured greedy agreement out of 16 (see below)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Packages by variant name, converted lazily (once each) on first use."""
    built: dict[str, object] = {}
    root = tmp_path_factory.mktemp("coreml")

    def get(request, name: str):
        if name not in built:
            fixture, options, _ = VARIANTS[name]
            checkpoint = request.getfixturevalue(fixture)
            built[name] = (convert_to_coreml(checkpoint, root / f"{name}.mlpackage", options, progress=False),
                           checkpoint)
        return built[name]

    return get


def _tolerance(name: str):
    options = VARIANTS[name][1]
    if options.compress != "none":
        return COMPRESSED_TOLERANCES[options.compress]
    return TOLERANCES["fp32" if options.dtype == "fp32" and options.kv_cache == "io" else "fp16"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_package_matches_reference(request, packages, name):
    package, checkpoint = packages(request, name)
    report = verify_package(str(package), str(checkpoint), seq_len=SEQ)
    tol = _tolerance(name)
    assert report.tolerance == tol
    for c in report.comparisons:
        assert c.cosine >= tol.cosine and c.rel_max_abs <= tol.rel_max_abs, (name, c)
    if VARIANTS[name][0] == "gpt2_dir":
        assert len(report.greedy_ours) == 16
        same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
        if name in FOUR_BIT:
            # Measured on this random model: int4 3/16, palettize4 9/16 free-running greedy tokens agree
            # (cosine 0.954 and 0.950). 16 levels per weight are too coarse for a 64-wide random model whose
            # weights all matter, and its logits are near-ties everywhere; tests/test_coreml_four_bit.py
            # measures 4-bit on the trained keyboard model instead. Full agreement is NOT met at 4 bits.
            assert same >= FOUR_BIT[name], (name, same)
        else:
            # Prefill, then 16 decode steps through the cache (state or io) reproduce the reference's tokens.
            assert report.greedy_ours == report.greedy_reference, name


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v[2]])
def test_compression_emits_its_op(request, packages, name):
    package, _ = packages(request, name)
    program = MilProgram(package)
    ops = {op.op_type for fn in program.functions.values() for op in fn.operations}
    assert VARIANTS[name][2] in ops
    weights = inspect_package(package).weight_bytes
    compressed = {"int8", "uint8", "int4", "uint4", "uint6"} & set(weights)
    assert compressed, weights  # the blob holds compressed records


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ane_rules(request, packages, name):
    """Zero violations everywhere but GPT-2's decode function, whose every activation is (1, C, 1, 1):
    one token is a size-1 sequence axis in the (B, C, 1, S) layout, unavoidable for single-token decode."""
    package, _ = packages(request, name)
    report = inspect_package(package)
    fp32 = VARIANTS[name][1].dtype == "fp32"
    for v in report.violations:
        assert (v.function == "decode" and v.rule == "size-1 last axis") or (fp32 and v.rule == "non-fp16 compute"), v
    assert not [v for v in report.violations if v.function != "decode" and not fp32]
    assert not [v for v in report.violations if v.rule in ("rank > 4", "dimension > 16384", "not on ANE")]


def test_gpt2_package_layout(request, packages, gpt2_dir):
    package, _ = packages(request, "gpt2-state-fp16")
    meta = read_metadata(package)
    assert meta["architecture"] == "gpt2" and meta["kv_cache"] == "state" and meta["functions"] == "prefill,decode"
    assert meta["seq_lens"] == str(PREFILL) and meta["context"] == str(CONTEXT) and meta["precision"] == "fp16"
    assert meta["weights_sha256"] == sha256_file(weights_path(package))
    # One sha256 per source weight file, as `sha256sum FILE` prints it.
    source = {"model.safetensors": sha256_file(gpt2_dir / "model.safetensors")}
    assert json.loads(meta["source_weights_sha256"]) == source
    interface = json.loads(meta["interface"])
    assert interface["prefill"]["inputs"] == ["input_ids", "position"]
    assert interface["decode"]["states"] == ["key_cache", "value_cache"]
    assert interface["decode"]["outputs"] == ["logits_0"]
    report = inspect_package(package)
    assert [str(f) for f in report.functions["prefill"].inputs] == ["input_ids [1, 16] int32", "position [1] int32"]
    assert str(report.functions["decode"].states[0]) == "key_cache [2, 64, 1, 96] fp16"
    # Both functions share one copy of the weights, and the tied head is the token embedding's constant: the
    # blob holds about one model's worth of fp16, the (211, 64) table once (it held it twice before).
    params = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 211 * 64 + 160 * 64
    assert report.weight_bytes["float16"] < 1.1 * 2 * params


def test_large_head_is_split_into_outputs(tmp_path):
    """Rule 7: a vocabulary above 16384 comes out as chunks, none wider than the ANE's limit."""
    from tests.checkpoints import make_gpt2

    ckpt = make_gpt2(tmp_path / "wide", n_layer=1, n_embd=32, n_head=2, vocab_size=20000, n_positions=32)
    package = convert_to_coreml(ckpt, tmp_path / "wide.mlpackage", CoreMLOptions(context=16, seq_lens=(4,)),
                                progress=False)
    outputs = inspect_package(package).functions["decode"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    report = verify_package(str(package), str(ckpt), seq_len=8, greedy_steps=8)
    assert report.passed, report.comparisons


def test_minilm_package_carries_tokenizer_and_pooling(request, packages):
    package, _ = packages(request, "minilm")
    meta = read_metadata(package)
    files = json.loads(meta["tokenizer_files"])
    assert any(f.endswith("tokenizer.json") for f in files)
    assert all((package / f).is_file() for f in files)
    assert "sentence_embedding" in json.loads(meta["interface"])["main"]["outputs"]
    assert json.loads((package / "Manifest.json").read_text())["itemInfoEntries"]  # items registered
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package / next(f for f in files if f.endswith("tokenizer.json"))))
    assert tok.encode("hello world").ids


def test_cli_inspect_and_verify(request, packages):
    package, checkpoint = packages(request, "gpt2-state-fp16")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(package)])
    assert result.exit_code == 0, result.output
    assert "function prefill" in result.output and "state  key_cache [2, 64, 1, 96] fp16" in result.output
    assert "size-1 last axis" in result.output  # decode's, reported, not hidden
    assert "compute plan skipped" in result.output or "compute plan:" in result.output
    result = runner.invoke(app, ["verify", str(package), "--reference", str(checkpoint), "--seq-len", str(SEQ)])
    assert result.exit_code == 0, result.output
    assert "greedy tokens: 16/16" in result.output and "PASS" in result.output


def test_state_persists_across_calls(request, packages):
    """Decode after prefill reads the cache the prefill wrote: without it the logits differ."""
    from ondevice.backends.coreml import load_package

    package, _ = packages(request, "gpt2-state-fp16")
    lm = load_package(package)
    lm.prefill([5, 6, 7])
    after_prompt = lm.decode(8)
    lm.trim(0)
    alone = lm.prefill([8])[0]
    assert np.abs(after_prompt - alone).max() > 1e-2
    lm.trim(0)
    lm.prefill([5, 6, 7, 9])
    lm.trim(3)  # rewinding and decoding the token again gives the logits as if 9 was never seen
    np.testing.assert_array_equal(lm.decode(8), after_prompt)


def test_a_package_runs_without_torch(request, packages):
    """The Core ML runtime (coreml_runtime/, ondevice/backends/coreml.py) needs the package alone: with torch
    made unimportable, the package still loads and evaluates to the logits it gives with torch present."""
    import subprocess
    import sys

    from ondevice.backends.coreml import load_package

    package, _ = packages(request, "gpt2-state-fp16")
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
    import io

    assert np.array_equal(np.load(io.BytesIO(out.stdout)), expected)
