"""`ondevice verify` reports parity and its exit code tells pass from fail."""

from __future__ import annotations

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
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export),
                                    "--quantize", "8", "--dtype", "fp32"]).exit_code == 0
    result = CliRunner().invoke(app, ["verify", str(export), "--reference", str(gpt2_dir), "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    assert "mlx export q8" in result.stdout and "bounds (q8): max |err| ≤ 0.08 × scale" in result.stdout
    assert "required of lossless formats only" in result.stdout
    fp16 = tmp_path / "gpt2-fp16"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(fp16)]).exit_code == 0
    lossless = CliRunner().invoke(app, ["verify", str(fp16), "--reference", str(gpt2_dir), "--seq-len", "16"])
    assert lossless.exit_code == 0 and "greedy tokens: 16/16 match" in lossless.stdout, lossless.output
    mismatched = CliRunner().invoke(app, ["verify", str(export), "--reference", str(bert_dir)])
    assert mismatched.exit_code == 2 and "differs from the reference" in mismatched.stderr
