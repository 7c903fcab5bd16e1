"""`ondevice bench` tells success from nothing having run: exit 1 with one line when every measurement of a
requested model failed, exit 2 on bad options (threads, lengths, an --out that is a file) before anything
runs, and MLX directories run on the mlx backend only."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from ondevice.bench.run import failed_models
from ondevice.cli import app
from tests.test_bad_input import assert_one_line_error


def _record(model: str, status: str, reason: str | None = None) -> dict:
    return {"model": model, "status": status, "reason": reason}


def test_failed_models_are_those_with_errors_and_nothing_measured():
    records = [_record("-", "error", "bandwidth"),
               _record("a", "error", "CheckpointError: truncated"), _record("a", "error", "again"),
               _record("b", "error", "one backend broke"), _record("b", "ok"),
               _record("c", "skipped", "coreml needs macOS")]
    assert failed_models(records) == {"a": "CheckpointError: truncated"}


def test_a_truncated_checkpoint_fails_the_run(gpt2_dir, tmp_path):
    broken = Path(shutil.copytree(gpt2_dir, tmp_path / "truncated"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = CliRunner().invoke(app, ["bench", "--model", str(broken), "--backends", "torch-ane", "--quick",
                                      "--seq-lens", "8", "--repeats", "1", "--threads", "1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: every measurement of truncated failed (first: ") and "safetensors" in line
    assert (tmp_path / "out" / "bench.json").is_file()  # the results are still written, errors and all


def test_mlx_directories_run_on_mlx_only(gpt2_dir, tmp_path):
    export = tmp_path / "gpt2-mlx"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export)]).exit_code == 0
    assert_one_line_error(CliRunner().invoke(app, ["bench", "--model", str(export), "--backends", "torch-ane"]),
                          "runs on the mlx backend only", "--backends mlx")
    assert_one_line_error(CliRunner().invoke(app, ["bench", "--model", str(export), "--model", str(gpt2_dir)]),
                          "runs on the mlx backend only", "other models separately")
