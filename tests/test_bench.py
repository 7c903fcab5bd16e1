"""`ondevice bench` on a tiny configuration: every record fits the schema, every measured value is a
positive number, skipped backends say why, and the table, markdown and plot are written. The timings
themselves are not checked: they belong to the machine, not to the code."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from benchmarks.bench.records import SCHEMA
from benchmarks.bench.run import BenchOptions, run_bench
from tests.checkpoints import make_bert, make_gpt2


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One run: a tiny GPT-2 (with the bundled keyboard model's tokenizer, so that predictive text runs)
    and a tiny BERT, on the reference, torch-ane, mlx, coreml and the mlx_lm peer; each in its own process."""
    from bundled_models import keyboard_gpt2_path

    root = tmp_path_factory.mktemp("bench")
    gpt2 = make_gpt2(root / "gpt2", vocab_size=8192, n_positions=160)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(keyboard_gpt2_path()) / name, gpt2 / name)
    bert = make_bert(root / "bert")
    backends = ["reference", "torch-ane", "mlx", "coreml", "mlx_lm"]
    options = BenchOptions(models=[str(gpt2), str(bert)], backends=backends,
                           seq_lens=[8], repeats=1, threads=1, decode_tokens=4, keystrokes=12, reuse_lines=1,
                           bandwidth_mib=16, cache_dir=root / "cache", out=root / "out")
    console = Console(file=io.StringIO(), width=200)
    out = run_bench(options, console)
    document = json.loads((out / "bench.json").read_text())
    return out, document, console.file.getvalue()


def _find(records: list[dict], **fields) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


def test_every_record_fits_the_schema(bench):
    _, document, _ = bench
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert document["records"]
    for r in document["records"]:
        errors = [e.message for e in validator.iter_errors(r)]
        assert not errors, (r, errors)
    assert document["machine"]["cores"] >= 1 and document["machine"]["libraries"]["torch"]


def test_nothing_failed_and_values_are_positive(bench):
    _, document, _ = bench
    records = document["records"]
    assert not [r for r in records if r["status"] == "error"], [r["reason"] for r in records if r["status"] == "error"]
    for r in _find(records, status="ok"):
        assert isinstance(r["value"], int | float) and r["value"] > 0, r
        if r["spread"]:
            assert 0 < r["spread"]["p10"] <= r["spread"]["p90"], r


def test_each_backend_measures_what_its_model_has(bench):
    _, document, _ = bench
    records = document["records"]
    for backend in ("reference", "torch-ane", "mlx"):
        gpt2 = _find(records, model="gpt2", backend=backend, source="checkpoint", status="ok")
        kinds = {r["kind"] for r in gpt2}
        assert {"load_cold", "load_warm", "prefill", "decode", "peak_memory", "runtime_baseline_memory"} <= kinds
        bert = _find(records, model="bert", backend=backend, status="ok")
        assert {"encode", "load_cold", "load_warm", "peak_memory"} <= {r["kind"] for r in bert}
        decode = _find(gpt2, kind="decode")[0]
        assert decode["bandwidth_fraction"] > 0 and decode["weight_bytes"] > 0
        peak = _find(gpt2, kind="peak_memory")[0]["value"]
        assert peak >= _find(gpt2, kind="runtime_baseline_memory")[0]["value"]
        if backend != "reference":
            assert _find(gpt2, kind="prefill")[0]["vs_reference"] > 0
            assert {"keystroke_p50", "keystroke_p95", "cache_reuse_ratio"} <= kinds
    assert _find(records, model="gpt2", backend="mlx_lm", kind="decode", status="ok")
    ours = _find(records, model="gpt2", backend="mlx", source="mlx-export", kind="decode")[0]
    assert ours["vs_peer"]["peer"] == "mlx_lm" and ours["vs_peer"]["ratio"] > 0
    assert _find(records, kind="memory_bandwidth", status="ok")


@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac Core ML runs")
def test_coreml_is_skipped_with_its_reason_off_macos(bench):
    _, document, _ = bench
    for model in ("gpt2", "bert"):
        (coreml,) = _find(document["records"], model=model, backend="coreml")
        assert coreml["status"] == "skipped" and "macOS" in coreml["reason"]


def test_table_and_markdown_are_written(bench):
    out, _, terminal = bench
    md = (out / "bench.md").read_text()
    assert "## gpt2" in md and "## bert" in md and "| backend |" in md
    assert "gpt2" in terminal and "torch-ane" in terminal and "macOS" in terminal


def test_plot_is_written(bench):
    out, _, _ = bench
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_job_becomes_an_error_record(tmp_path):
    from benchmarks.bench.worker import run_job

    (r,) = run_job({"job": "backend", "model": "missing", "backend": "torch-ane", "precision": "fp32",
                    "checkpoint": str(tmp_path / "nothing-here"), "threads": 1})
    assert r["status"] == "error" and r["reason"]
