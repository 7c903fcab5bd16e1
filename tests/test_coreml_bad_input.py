"""Core ML conversion, inspect and verify refuse bad input with one clear line and write nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from canonical.errors import CheckpointError, ConversionError, InputError
from convert.checkpoint import load_checkpoint
from convert.coreml import IOS_WEIGHT_LIMIT, CoreMLOptions, check_size, convert_to_coreml, estimated_weight_bytes
from ondevice.cli import app
from ondevice.verify import verify_package
from tests.families import make
from tests.packages import LLAMA, QWEN3, STATE


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def _one_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CoreMLOptions(target="iOS17"), "KV cache 'state' needs iOS18/macOS15"),
        (CoreMLOptions(target="macOS14", kv_cache="io", compress="int4"), "int4 per-block quantization needs iOS18"),
        (CoreMLOptions(target="iOS12"), "unknown deployment target 'iOS12'"),
        (CoreMLOptions(compress="int2"), "unknown compression 'int2'"),
        (CoreMLOptions(dtype="bf16"), "precision 'bf16' is not available for Core ML"),
        (CoreMLOptions(kv_cache="paged"), "unknown KV cache style 'paged'"),
        (CoreMLOptions(context=500), "context 500 must be in 2..160"),
        (CoreMLOptions(context=32, seq_lens=(64,)), "prefill length 64 exceeds the context of 32"),
        (CoreMLOptions(seq_lens=(8, 16)), "a causal LM takes one prefill length"),
        (
            CoreMLOptions(compress="int8", calibration_text=__file__),
            "calibration text applies to causal LMs with --compress int4 only",
        ),
        (CoreMLOptions(compress="int4", calibration_text="missing.txt"), "missing.txt: calibration text not found"),
    ],
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_refused_before_writing(gpt2_dir, family_root, tmp_path, options, message, family):
    from tests.families import make
    from tests.packages import LLAMA

    checkpoint = gpt2_dir if family == "gpt2" else make(LLAMA, family_root)
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace("+", r"\+")):
        convert_to_coreml(checkpoint, tmp_path / "out.mlpackage", options, progress=False)
    assert _listing(tmp_path) == []


def test_calibration_text_too_short_for_a_window(gpt2_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.\n")
    with pytest.raises(ConversionError, match=r"short\.txt: \d+ tokens, too few for one 160-token calibration window"):
        convert_to_coreml(
            gpt2_dir, tmp_path / "out.mlpackage", CoreMLOptions(compress="int4", calibration_text=short), progress=False
        )
    assert _listing(tmp_path) == ["short.txt"]


def test_encoder_length_beyond_positions(bert_dir, tmp_path):
    with pytest.raises(ConversionError, match="sequence length 4096 exceeds the model's 160 positions"):
        convert_to_coreml(bert_dir, tmp_path / "out.mlpackage", CoreMLOptions(seq_lens=(4096,)), progress=False)
    assert _listing(tmp_path) == []


def test_cli_refuses_existing_output_and_bad_target(gpt2_dir, tmp_path):
    existing = tmp_path / "model.mlpackage"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(gpt2_dir), "--to", "coreml", "--out", str(existing)])
    assert result.exit_code == 2
    # not "pass --overwrite", which would refuse a folder of the user's files too: why it would
    assert "holds 'keep', not written by ondevice" in result.output and "pass --overwrite" not in result.output
    assert (existing / "keep").read_text() == "mine"
    (existing / "keep").unlink()  # an empty folder --overwrite would replace: said so
    result = runner.invoke(app, ["convert", str(gpt2_dir), "--to", "coreml", "--out", str(existing)])
    assert result.exit_code == 2 and "already exists (pass --overwrite to replace it)" in result.output
    (existing / "keep").write_text("mine")
    result = runner.invoke(
        app, ["convert", str(gpt2_dir), "--to", "coreml", "--out", str(tmp_path / "new.mlpackage"), "--target", "iOS17"]
    )
    assert result.exit_code == 2
    assert "error: KV cache 'state' needs iOS18/macOS15" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _listing(tmp_path) == ["model.mlpackage"]


def test_failed_conversion_leaves_nothing(gpt2_dir, tmp_path, monkeypatch):
    """A failure after conversion started (here: in the metadata stage) removes the partial package."""
    import convert.coreml as coreml

    def broken(*args, **kwargs):
        raise ConversionError("simulated failure while writing metadata")

    monkeypatch.setattr(coreml, "write_package_extras", broken)
    with pytest.raises(ConversionError, match="simulated failure"):
        convert_to_coreml(
            gpt2_dir, tmp_path / "out.mlpackage", CoreMLOptions(context=16, seq_lens=(4,)), progress=False
        )
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("damage", ["missing", "empty_dir", "bad_manifest", "bad_spec", "no_metadata"])
def test_corrupt_package_inspect_and_verify(gpt2_dir, tmp_path, damage):
    package = tmp_path / "broken.mlpackage"
    if damage != "missing":
        package.mkdir()
    if damage == "bad_manifest":
        (package / "Manifest.json").write_text("{not json")
    if damage in ("bad_spec", "no_metadata"):
        (package / "Manifest.json").write_text(
            '{"fileFormatVersion": "1.0.0", "rootModelIdentifier": "A", "itemInfoEntries": '
            '{"A": {"path": "com.apple.CoreML/model.mlmodel", "author": "x", "name": "model.mlmodel"}}}'
        )
        spec = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
        spec.parent.mkdir(parents=True)
        if damage == "bad_spec":
            spec.write_bytes(b"\x00garbage\xff" * 10)
        else:
            import coremltools as ct

            spec.write_bytes(ct.proto.Model_pb2.Model(specificationVersion=9).SerializeToString())
    runner = CliRunner()
    for args in (["inspect", str(package)], ["verify", str(package), "--reference", str(gpt2_dir)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "broken.mlpackage" in lines[0], result.output


def test_verify_package_needs_reference(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "x.mlpackage")])
    assert result.exit_code == 2
    assert "needs --reference CHECKPOINT" in result.output


@pytest.fixture(scope="module")
def cli_package(tmp_path_factory, gpt2_dir):
    """One GPT-2 package converted through the command line; the result of that run, and the package."""
    out = tmp_path_factory.mktemp("cli") / "gpt2.mlpackage"
    result = CliRunner().invoke(
        app, ["convert", str(gpt2_dir), "--to", "coreml", "--out", str(out), "--context", "24", "--seq-len", "4"]
    )
    assert result.exit_code == 0, result.output
    return result, out


def test_conversion_is_quiet(cli_package):
    """A GPT-2 conversion prints its summary line, and nothing of coremltools, torch or scikit-learn (their
    import notices, progress bars and `Saving value type of int64` are captured; --verbose shows them).
    Our progress bar draws only on a terminal, which a test's stderr is not."""
    result, out = cli_package
    assert result.stderr == "", result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}: Core ML package (fp16, target iOS18"), lines
    assert "--verbose shows them" in lines[0]


def test_captured_collects_third_party_output_and_verbose_shows_it(capsys):
    import logging
    import sys
    import warnings

    from ondevice.quiet import captured

    def chatter():
        print("Saving value type of int64 into a builtin type of int32", file=sys.stderr)
        logging.getLogger("coremltools").warning("Failed to load _MLModelProxy")
        warnings.warn("Torch version 2.13 has not been tested with coremltools", UserWarning, stacklevel=1)

    with captured() as noise:
        chatter()
    assert capsys.readouterr().err == ""
    assert any("Saving value type" in line for line in noise.lines)
    assert any("Failed to load _MLModelProxy" in line for line in noise.lines)
    assert any("has not been tested" in line for line in noise.lines)
    with captured(verbose=True), pytest.warns(UserWarning, match="has not been tested"):
        chatter()
    assert "Saving value type" in capsys.readouterr().err


def test_a_bug_inside_captured_shows_what_was_captured(capsys):
    import sys

    from ondevice.quiet import captured

    with pytest.raises(ZeroDivisionError), captured():
        print("context before the crash", file=sys.stderr)
        _ = 1 / 0
    assert "context before the crash" in capsys.readouterr().err


def test_inspect_checks_the_recorded_weights_and_names_rules_verbatim(cli_package):
    _, package = cli_package
    result = CliRunner().invoke(app, ["inspect", str(package)])
    assert result.exit_code == 0, result.output
    assert "as recorded" in result.stdout
    # rich markup must not swallow the function name in brackets
    assert "  [decode] size-1 last axis" in result.stdout or "ANE rule violations: none" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing"])
def test_altered_weights_are_refused_by_inspect_and_verify(cli_package, gpt2_dir, tmp_path, damage):
    import shutil

    from coreml_runtime.package import weights_path

    _, original = cli_package
    package = Path(shutil.copytree(original, tmp_path / "altered.mlpackage"))
    weights = weights_path(package)
    data = bytearray(weights.read_bytes())
    if damage == "altered":  # same size, a few bytes changed: what made verify print NaN logits
        data[256:1024] = b"\xff" * 768
        weights.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        weights.unlink()
    fragment = "missing" if damage == "missing" else "differs from the"
    for args in (
        ["inspect", str(package)],
        ["verify", str(package), "--reference", str(gpt2_dir)],
        ["predict", "--backend", "coreml", "--model", str(package), "x"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "weight.bin" in lines[0] and fragment in lines[0], lines[0]
        assert "PASS" not in result.stdout and "greedy" not in result.stdout


# The Llama family's refusals: shapes, references, sizes.


def test_mismatched_shapes_are_refused(family_root, tmp_path):
    """config.json and the weights disagree (hidden size): refused while reading, one line, exit 2, nothing
    written; a package verified against a reference of another vocabulary: refused likewise."""
    import shutil

    source = make(LLAMA, family_root)
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


def test_package_against_a_mismatched_reference(cli_package, family_root):
    _, package = cli_package
    llama = make(LLAMA, family_root)
    with pytest.raises(InputError, match="does not match the reference"):
        verify_package(str(package), str(llama))
    line = _one_line(CliRunner().invoke(app, ["verify", str(package), "--reference", str(llama)]))
    assert "does not match" in line


def test_large_ios_package_is_refused_unless_allowed(family_root, tmp_path, monkeypatch):
    """Above the limit an iOS package is refused in one line naming its size and the compression that fits;
    --allow-large or a macOS target writes it. The limit is lowered to the tiny model's scale here."""
    import convert.coreml as coreml

    ckpt = load_checkpoint(make(QWEN3, family_root))
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
