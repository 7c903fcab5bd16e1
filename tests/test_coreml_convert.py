"""Core ML conversion of GPT-2 and the BERT family in fp16 and fp32 (tests/coreml_packages.py; the compressed
packages in test_coreml_compressed.py), checked on Linux: each written package runs through the numpy evaluator
of its ML program against the transformers reference, and through the static ANE rules; its layout, metadata,
tokenizer, state and the runtime without torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convert.coreml import CoreMLOptions, convert_to_coreml
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.package import read_metadata, sha256_file, weights_path
from ondevice.cli import app
from ondevice.verify import verify_package
from tests.coreml_packages import (
    CONTEXT,
    PREFILL,
    SEQ,
    VARIANTS,
    check_ane_rules,
    check_package_matches_reference,
    package_maker,
)

PLAIN = [name for name, (_, options, _) in VARIANTS.items() if options.compress == "none"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, request):
    return package_maker(tmp_path_factory.mktemp("coreml"), request)


@pytest.mark.parametrize("name", PLAIN)
def test_package_matches_reference(packages, name):
    check_package_matches_reference(packages, name)


@pytest.mark.parametrize("name", PLAIN)
def test_ane_rules(packages, name):
    check_ane_rules(packages, name)


def test_gpt2_package_layout(packages, gpt2_dir):
    package, _ = packages("gpt2-state-fp16")
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
    package = convert_to_coreml(
        ckpt, tmp_path / "wide.mlpackage", CoreMLOptions(context=16, seq_lens=(4,)), progress=False
    )
    outputs = inspect_package(package).functions["decode"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    report = verify_package(str(package), str(ckpt), seq_len=8, greedy_steps=8)
    assert report.passed, report.comparisons


def test_minilm_package_carries_tokenizer_and_pooling(packages):
    package, _ = packages("minilm")
    meta = read_metadata(package)
    files = json.loads(meta["tokenizer_files"])
    assert any(f.endswith("tokenizer.json") for f in files)
    assert all((package / f).is_file() for f in files)
    assert "sentence_embedding" in json.loads(meta["interface"])["main"]["outputs"]
    assert json.loads((package / "Manifest.json").read_text())["itemInfoEntries"]  # items registered
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package / next(f for f in files if f.endswith("tokenizer.json"))))
    assert tok.encode("hello world").ids


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


def test_state_persists_across_calls(packages):
    """Decode after prefill reads the cache the prefill wrote: without it the logits differ."""
    from ondevice.backends.coreml import load_package

    package, _ = packages("gpt2-state-fp16")
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


def test_a_package_runs_without_torch(packages):
    """The Core ML runtime (coreml_runtime/, ondevice/backends/coreml.py) needs the package alone: with torch
    made unimportable, the package still loads and evaluates to the logits it gives with torch present."""
    import subprocess
    import sys

    from ondevice.backends.coreml import load_package

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
    import io

    assert np.array_equal(np.load(io.BytesIO(out.stdout)), expected)
