"""`ondevice verify` reports parity and its exit code tells pass from fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ondevice.verify
from convert.checkpoint import load_checkpoint
from ondevice.cli import app


def test_verify_passes_on_gpt2_and_prints_the_figures(gpt2_dir):
    result = CliRunner().invoke(app, ["verify", str(gpt2_dir), "--seq-len", "7"])
    assert result.exit_code == 0, result.output
    assert "logits" in result.stdout and "greedy tokens: 16/16 match" in result.stdout and "PASS" in result.stdout


def test_verify_passes_on_real_minilm_by_its_bundled_name():
    result = CliRunner().invoke(app, ["verify", "all-MiniLM-L6-v2", "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    for output in ("hidden", "pooled", "sentence_embedding", "PASS"):
        assert output in result.stdout


def test_verify_fp16_uses_the_fp16_bounds(distilbert_dir):
    result = CliRunner().invoke(app, ["verify", str(distilbert_dir), "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert "fp16" in result.stdout and "0.999" in result.stdout


def test_verify_fails_with_exit_1_when_a_bound_is_broken(gpt2_dir, monkeypatch):
    """A model that differs from the reference (one perturbed weight) must be caught."""
    real = load_checkpoint(gpt2_dir)
    real.weights["layers.1.mlp.fc2.bias"] = real.weights["layers.1.mlp.fc2.bias"] + 0.05 * torch.randn(64)
    monkeypatch.setattr(ondevice.verify, "load_checkpoint", lambda spec: real)
    result = CliRunner().invoke(app, ["verify", str(gpt2_dir), "--seq-len", "7"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout


def test_verify_an_mlx_export_against_its_source(gpt2_dir, bert_dir, tmp_path):
    export = tmp_path / "gpt2-q8"
    assert (
        CliRunner()
        .invoke(
            app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export), "--quantize", "8", "--dtype", "fp32"]
        )
        .exit_code
        == 0
    )
    result = CliRunner().invoke(app, ["verify", str(export), "--reference", str(gpt2_dir), "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    assert "mlx export q8" in result.stdout
    assert "bounds (q8): max |err| ≤ 0.12 × scale, cosine ≥ 0.9983" in result.stdout
    assert "required of lossless formats only" in result.stdout
    fp16 = tmp_path / "gpt2-fp16"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(fp16)]).exit_code == 0
    lossless = CliRunner().invoke(app, ["verify", str(fp16), "--reference", str(gpt2_dir), "--seq-len", "16"])
    assert lossless.exit_code == 0 and "greedy tokens: 16/16 match" in lossless.stdout, lossless.output
    mismatched = CliRunner().invoke(app, ["verify", str(export), "--reference", str(bert_dir)])
    assert mismatched.exit_code == 2 and "differs from the reference" in mismatched.stderr


def test_non_finite_logits_fail_and_greedy_agreement_is_not_reported(gpt2_dir, monkeypatch):
    """NaN logits "agree" with any argmax: verify fails them and never prints greedy agreement next to them."""
    import numpy as np

    real_load = ondevice.verify.load_backend

    class NaNLogits:
        def __init__(self, lm):
            self.lm = lm

        def __getattr__(self, name):
            return getattr(self.lm, name)

        def prefill(self, ids):
            return np.full_like(self.lm.prefill(ids), np.nan)

        def decode(self, token):
            return np.full_like(self.lm.decode(token), np.nan)

    monkeypatch.setattr(ondevice.verify, "load_backend", lambda *a, **k: NaNLogits(real_load(*a, **k)))
    result = CliRunner().invoke(app, ["verify", str(gpt2_dir), "--seq-len", "7"])
    assert result.exit_code == 1, result.output
    assert "non-finite values (NaN or inf) in our outputs: logits" in result.stdout
    assert "greedy tokens: not compared" in result.stdout
    assert "match" not in result.stdout and "FAIL" in result.stdout


def test_non_finite_values_late_in_greedy_decoding_also_fail(gpt2_dir, monkeypatch):
    import numpy as np

    real_load = ondevice.verify.load_backend

    class LateInf:
        def __init__(self, lm):
            self.lm, self.decodes = lm, 0

        def __getattr__(self, name):
            return getattr(self.lm, name)

        def decode(self, token):
            self.decodes += 1
            logits = self.lm.decode(token)
            return np.full_like(logits, np.inf) if self.decodes == 5 else logits

    monkeypatch.setattr(ondevice.verify, "load_backend", lambda *a, **k: LateInf(real_load(*a, **k)))
    report = ondevice.verify.verify(str(gpt2_dir), seq_len=7)
    assert report.nonfinite == {"logits": 211} and report.greedy_match is None and not report.passed


def test_verify_seq_len_zero_is_not_the_default(gpt2_dir):
    from canonical.errors import InputError

    with pytest.raises(InputError, match="sequence length must be at least 1, got 0"):
        ondevice.verify.verify(str(gpt2_dir), seq_len=0)


@pytest.fixture(scope="module")
def keyboard_export(tmp_path_factory):
    """The bundled keyboard model exported to MLX, 8-bit: an export with a tokenizer and a quantization."""
    out = tmp_path_factory.mktemp("mlx") / "keyboard-q8"
    result = CliRunner().invoke(app, ["convert", "keyboard-gpt2", "--to", "mlx", "--out", str(out), "--quantize", "8"])
    assert result.exit_code == 0, result.output
    return out


def test_an_mlx_directory_is_verified_against_the_checkpoint_it_records(gpt2_dir, tmp_path):
    export = tmp_path / "gpt2-mlx"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export)]).exit_code == 0
    result = CliRunner().invoke(app, ["verify", str(export), "--seq-len", "8"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {gpt2_dir}" in result.stdout and "mlx export fp16" in result.stdout
    assert "greedy tokens: 16/16 match" in result.stdout
    wrong = CliRunner().invoke(app, ["verify", str(export), "--backend", "torch-ane"])
    assert wrong.exit_code == 2 and "runs on the mlx backend, not torch-ane" in wrong.stderr
    # the source moved away: one line saying what to pass
    moved = tmp_path / "moved"
    copy = tmp_path / "ckpt"
    import shutil

    shutil.copytree(gpt2_dir, copy)
    other = tmp_path / "gpt2-mlx-2"
    assert CliRunner().invoke(app, ["convert", str(copy), "--to", "mlx", "--out", str(other)]).exit_code == 0
    copy.rename(moved)
    gone = CliRunner().invoke(app, ["verify", str(other)])
    assert gone.exit_code == 2 and "pass --reference CHECKPOINT" in gone.stderr and "is gone" in gone.stderr
    with_reference = CliRunner().invoke(app, ["verify", str(other), "--reference", str(moved), "--seq-len", "8"])
    assert with_reference.exit_code == 0, with_reference.output


def test_mlx_directories_are_first_class_inputs(keyboard_export, tmp_path):
    """verify, predict --backend mlx and generate read an export (with its quantization); convert refuses it in
    one line naming the checkpoint to convert instead; other backends are refused in one line."""
    runner = CliRunner()
    verified = runner.invoke(app, ["verify", str(keyboard_export), "--seq-len", "16"])
    assert verified.exit_code == 0, verified.output
    assert "mlx export q8" in verified.stdout
    predicted = runner.invoke(app, ["predict", "--model", str(keyboard_export), "--backend", "mlx", "I went to the "])
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stdout.strip() and "(no suggestion)" not in predicted.stdout
    refused = runner.invoke(app, ["predict", "--model", str(keyboard_export), "I went to the "])
    assert refused.exit_code == 2 and "runs on --backend mlx, not torch-ane" in refused.stderr
    generated = runner.invoke(app, ["generate", str(keyboard_export), "The", "--max-tokens", "4"])
    assert generated.exit_code == 0, generated.output
    converted = runner.invoke(
        app, ["convert", str(keyboard_export), "--to", "coreml", "--out", str(tmp_path / "k.mlpackage")]
    )
    assert converted.exit_code == 2 and "convert from the checkpoint it came from" in converted.stderr
    assert "missing tensor" not in converted.stderr
    assert list(tmp_path.iterdir()) == []


def test_predict_on_the_bundled_model_imports_neither_coremltools_nor_mlx():
    import subprocess
    import sys

    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom ondevice.cli import app\n"
        "r = CliRunner().invoke(app, ['predict', 'I went to the '])\nassert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('coremltools', 'mlx', 'mlx.core', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_reference_that_outputs_nothing_fails_whatever_the_cosine(gpt2_dir, tmp_path):
    """A final layer norm of zeros makes every logit 0 in both implementations: their cosine is 1.0 and every
    token "agrees", yet nothing was compared. verify fails it (exit 1), saying why, and reports no greedy tokens."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    directory = Path(shutil.copytree(gpt2_dir, tmp_path / "silent"))
    state = load_file(directory / "model.safetensors")
    state["transformer.ln_f.weight"].zero_()
    state["transformer.ln_f.bias"].zero_()
    save_file(state, directory / "model.safetensors")
    result = CliRunner().invoke(app, ["verify", str(directory), "--seq-len", "8"])
    assert result.exit_code == 1, result.output
    assert "the reference's logits are constant (every value 0): there is nothing to agree with" in result.stdout
    assert "greedy tokens" not in result.stdout and "FAIL" in result.stdout


def test_uninformative_outputs_are_told_apart_from_real_ones():
    import numpy as np

    from ondevice.verify import uninformative

    rng = np.random.default_rng(0)
    assert uninformative(rng.normal(size=(4, 9))) is None
    assert uninformative(np.zeros((4, 9))) == "are constant (every value 0)"
    assert uninformative(np.full((3,), 2.5)) == "are constant (every value 2.5)"
    rows = np.repeat(rng.normal(size=(4, 1)), 9, axis=1)  # each position the same value for every token
    assert uninformative(rows) == "are constant along their last axis at every position"
    broken = rng.normal(size=(4, 9))
    broken[1, 2] = np.nan
    assert uninformative(broken) == "hold 1 NaN or inf values"


def _ondevice() -> str:
    import sys
    from pathlib import Path

    return str(Path(sys.executable).with_name("ondevice"))


def test_a_reader_that_leaves_early_does_not_change_the_verdict(gpt2_dir):
    """`ondevice verify CKPT | head -1`: the rest of the table goes nowhere, and the exit status is still PASS's 0
    (it was 1, a FAIL's, with nothing said)."""
    import subprocess

    process = subprocess.Popen(
        [_ondevice(), "verify", str(gpt2_dir), "--seq-len", "7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does once it has its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, stderr
    assert first.startswith(b"checkpoint: ") and stderr == ""


def test_a_terminal_that_cannot_show_unicode_still_gets_the_table(gpt2_dir):
    """PYTHONIOENCODING=ascii: the table's box lines and '≤' become replacement characters, not a traceback."""
    import os
    import subprocess

    done = subprocess.run(
        [_ondevice(), "verify", str(gpt2_dir), "--seq-len", "7"],
        capture_output=True,
        env=dict(os.environ, PYTHONIOENCODING="ascii"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert b"PASS" in done.stdout and b"Traceback" not in done.stderr
    done.stdout.decode("ascii")  # nothing but ASCII reached the stream


@pytest.mark.parametrize("which", ["causal", "encoder", "package"])
def test_our_model_is_freed_before_the_reference_loads(which, gpt2_dir, bert_dir, tmp_path, monkeypatch):
    """At billions of parameters two fp32 models do not fit beside each other: verify runs ours, keeps its
    outputs, drops it, and only then loads the reference (and still compares greedy tokens)."""
    import weakref

    from ondevice.backends import coreml as coreml_backend

    ours = []
    real_backend, real_package, real_reference = (ondevice.verify.load_backend, coreml_backend.load_package,
                                                   ondevice.verify.load_reference)  # fmt: skip

    def remembered(load):
        def loading(*args, **kwargs):
            model = load(*args, **kwargs)
            ours.append(weakref.ref(model))
            return model

        return loading

    def reference(ckpt):
        assert len(ours) == 1 and ours[0]() is None, "our model is still in memory"
        return real_reference(ckpt)

    monkeypatch.setattr(ondevice.verify, "load_backend", remembered(real_backend))
    monkeypatch.setattr(coreml_backend, "load_package", remembered(real_package))
    monkeypatch.setattr(ondevice.verify, "load_reference", reference)
    if which == "package":
        from convert.coreml import CoreMLOptions, convert_to_coreml

        package = convert_to_coreml(gpt2_dir, tmp_path / "p.mlpackage", CoreMLOptions(context=32, seq_lens=(8,)),
                                    progress=False)  # fmt: skip
        report = ondevice.verify.verify_package(str(package), str(gpt2_dir), seq_len=8)
    else:
        report = ondevice.verify.verify(str(gpt2_dir if which == "causal" else bert_dir), seq_len=8)
    assert report.passed, report
    assert (report.greedy_match is True) == (which != "encoder")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_reference_loads_in_the_stored_dtype_and_runs_in_fp32(dtype, tmp_path):
    """A 16-bit checkpoint's reference is loaded in its own dtype and upcast (so a 3B model is never held in bf16
    and fp32 at once): its parameters are fp32 and its logits are those of a model loaded straight into fp32, bit
    for bit; an fp32 checkpoint is loaded in fp32."""
    from transformers import AutoModelForCausalLM

    from convert.random_checkpoints import make_llama
    from ondevice.reference import _stored_dtype, load_reference

    directory = make_llama(tmp_path / "m", tie_word_embeddings=True, dtype=dtype)
    assert _stored_dtype(directory) == dtype
    reference = load_reference(load_checkpoint(directory))
    assert {p.dtype for p in reference.model.parameters()} == {torch.float32}
    assert reference.model.lm_head.weight is reference.model.model.embed_tokens.weight  # still tied
    straight = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = list(range(5, 37))
    with torch.inference_mode():
        want = straight(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_array_equal(reference.prefill(ids), want)
