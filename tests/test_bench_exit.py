"""`ondevice bench` tells success from nothing having run: exit 1 with one line when every measurement of a
requested model failed, exit 2 on bad options (threads, lengths, an --out that is a file) and on a model it cannot
read, before anything runs or is written; MLX directories run on the mlx backend only. Its default output is the
working directory's bench-results/, never the source tree or the installed package; an unwritable cache folder
falls back to a temporary one; the options say what runs (--keystrokes)."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from ondevice.bench.run import failed_models
from ondevice.cli import app
from tests.cli import assert_one_line_error


def _record(model: str, status: str, reason: str | None = None) -> dict:
    return {"model": model, "status": status, "reason": reason}


def test_failed_models_are_those_with_errors_and_nothing_measured():
    records = [
        _record("-", "error", "bandwidth"),
        _record("a", "error", "CheckpointError: truncated"),
        _record("a", "error", "again"),
        _record("b", "error", "one backend broke"),
        _record("b", "ok"),
        _record("c", "skipped", "coreml needs macOS"),
    ]
    assert failed_models(records) == {"a": "CheckpointError: truncated"}


def test_a_truncated_checkpoint_is_refused_before_anything_runs(gpt2_dir, tmp_path):
    broken = Path(shutil.copytree(gpt2_dir, tmp_path / "truncated"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            str(broken),
            "--backends",
            "torch-ane",
            "--quick",
            "--seq-lens",
            "8",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert_one_line_error(result, "truncated/model.safetensors: not a readable safetensors file")
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def _quick_bench(*extra: str) -> list[str]:
    return ["bench", "--backends", "torch-ane", "--seq-lens", "4", "--repeats", "1", "--threads", "1", *extra]


def test_bench_without_out_writes_in_the_working_directory_only(gpt2_dir, tmp_path, monkeypatch):
    """Not into benchmarks/results of the source tree (which the README embeds), nor inside the installed package:
    the source tree's git status and the package's folder are as they were."""
    import subprocess

    import ondevice

    root = Path(__file__).resolve().parents[1]
    package = Path(ondevice.__file__).resolve().parent

    def state() -> tuple[str, list]:
        status = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True, text=True
            ).stdout
            if (root / ".git").exists()
            else ""
        )
        files = sorted(
            (str(p.relative_to(package)), p.stat().st_mtime_ns)
            for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        return status, files

    before = state()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, _quick_bench("--model", str(gpt2_dir), "--keystrokes", "0"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "bench-results").iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert state() == before


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tmp_path):
    from ondevice.bench.run import usable_cache

    cache, note = usable_cache(Path("/proc/ondevice-bench-cache"))  # /proc: read-only even for root
    try:
        assert cache.is_dir() and cache != Path("/proc/ondevice-bench-cache")
        assert note.startswith("/proc/ondevice-bench-cache: cannot write there") and str(cache) in note
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    writable, none = usable_cache(tmp_path / "cache")
    assert writable == tmp_path / "cache" and none is None


def test_a_read_only_home_neither_hangs_nor_fails_the_peer(gpt2_dir, tmp_path, monkeypatch):
    """The mlx_lm peer exports into the cache (~/.cache/ondevice/bench): with a home that cannot be written it uses a
    temporary folder, says so in one line, and measures."""
    import json

    monkeypatch.setenv("HOME", "/proc")
    monkeypatch.delenv("ONDEVICE_BENCH_CACHE", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            str(gpt2_dir),
            "--backends",
            "mlx_lm",
            "--seq-lens",
            "4",
            "--repeats",
            "1",
            "--keystrokes",
            "0",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "/proc/.cache/ondevice/bench: cannot write there" in result.stdout
    records = json.loads((tmp_path / "out" / "bench.json").read_text())["records"]
    assert any(r["backend"] == "mlx_lm" and r["status"] == "ok" for r in records), records


def test_keystrokes_says_how_many_keys_are_replayed(tmp_path):
    """--keystrokes sets the replay (it was 2,000 whatever the other options said), and the plan line says so
    before the run starts."""
    import json

    result = CliRunner().invoke(
        app, _quick_bench("--model", "keyboard-gpt2", "--keystrokes", "30", "--out", str(tmp_path))
    )
    assert result.exit_code == 0, result.output
    assert "30 keystrokes replayed per predictive-text backend" in result.stdout.splitlines()[0]
    records = json.loads((tmp_path / "bench.json").read_text())["records"]
    (p50,) = [r for r in records if r["kind"] == "keystroke_p50"]
    assert 20 <= p50["repeats"] <= 40, p50["repeats"]  # whole words of held-out text up to about 30 keys


def test_mlx_directories_run_on_mlx_only(gpt2_dir, tmp_path):
    export = tmp_path / "gpt2-mlx"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export)]).exit_code == 0
    assert_one_line_error(
        CliRunner().invoke(app, ["bench", "--model", str(export), "--backends", "torch-ane"]),
        "runs on the mlx backend only",
        "--backends mlx",
    )
    assert_one_line_error(
        CliRunner().invoke(app, ["bench", "--model", str(export), "--model", str(gpt2_dir)]),
        "runs on the mlx backend only",
        "other models separately",
    )
