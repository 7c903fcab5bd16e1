"""`ondevice bench` on a tiny configuration: every record fits the schema, every measured value is a
positive number, skipped backends say why, and the table, markdown and plot are written. The timings
themselves are not checked: they belong to the machine, not to the code."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from rich.console import Console

from convert.random_checkpoints import make_bert, make_gpt2, make_llama
from ondevice.bench.records import SCHEMA
from ondevice.bench.run import BenchOptions, run_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One run: a tiny GPT-2 (with the bundled keyboard model's tokenizer, so that predictive text runs), a
    tiny Qwen3-dialect Llama (q/k norm, GQA, tied head) and a tiny BERT, on the reference, torch-ane, mlx,
    coreml and the mlx_lm peer; each in its own process."""
    from bundled_models import keyboard_gpt2_path

    root = tmp_path_factory.mktemp("bench")
    gpt2 = make_gpt2(root / "gpt2", vocab_size=8192, n_positions=160)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(keyboard_gpt2_path()) / name, gpt2 / name)
    bert = make_bert(root / "bert")
    llama = make_llama(
        root / "llama",
        "qwen3",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=64,
        tie_word_embeddings=True,
    )
    backends = ["reference", "torch-ane", "mlx", "coreml", "mlx_lm"]
    options = BenchOptions(
        models=[str(gpt2), str(llama), str(bert)],
        backends=backends,
        seq_lens=[8],
        repeats=1,
        threads=1,
        decode_tokens=4,
        keystrokes=12,
        reuse_lines=1,
        bandwidth_mib=16,
        cache_dir=root / "cache",
        out=root / "out",
    )
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


def test_the_llama_family_has_every_row_and_the_mlx_lm_peer(bench):
    """reference, torch-ane and mlx from the checkpoint, and ours against mlx-lm on the same MLX export."""
    _, document, _ = bench
    records = document["records"]
    for backend in ("reference", "torch-ane", "mlx"):
        rows = _find(records, model="llama", backend=backend, source="checkpoint", status="ok")
        assert {"load_cold", "prefill", "decode", "peak_memory"} <= {r["kind"] for r in rows}, backend
    for kind in ("prefill", "decode"):
        (ours,) = _find(records, model="llama", backend="mlx", source="mlx-export", kind=kind, status="ok")
        (theirs,) = _find(records, model="llama", backend="mlx_lm", kind=kind, status="ok")
        assert ours["vs_peer"]["peer"] == "mlx_lm" and ours["vs_peer"]["value"] == theirs["value"]


def test_generated_models_are_made_by_their_factories(tmp_path, monkeypatch):
    """`--model smollm2-135m-random` and `qwen3-0.6b-random` are made by `convert.random_checkpoints` into the
    cache (stubbed here: the real ones are 0.5 and 2.4 GB)."""
    from convert import random_checkpoints
    from ondevice.bench.run import GENERATED_MODELS, resolve_model

    made = []
    for factory in set(GENERATED_MODELS.values()):
        monkeypatch.setattr(random_checkpoints, factory, lambda d, f=factory: made.append((f, d)) or d)
    assert resolve_model("smollm2-135m-random", tmp_path) == ("smollm2-135m-random", tmp_path / "smollm2-135m-random")
    assert resolve_model("qwen3-0.6b-random", tmp_path)[1] == tmp_path / "qwen3-0.6b-random"
    assert [f for f, _ in made] == ["make_smollm2_135m", "make_qwen3_06b"]


def test_a_causal_lm_above_one_ios_package_is_benchmarked_as_a_chunked_model(family_root, minilm_dir, tmp_path):
    """Core ML jobs convert what `ondevice convert` would: one package where it fits an iOS app, else (a causal LM)
    a chunked model, which the Core ML runner loads like a package. Here the limit is lowered to a tiny model's size;
    the real one is IOS_WEIGHT_LIMIT (~1 GB)."""
    from coreml_runtime.chunked import read_chunked_model
    from ondevice.backends.coreml import load_package
    from ondevice.bench.runners import convert_package, package_path
    from tests.families import make
    from tests.packages import MISTRAL

    checkpoint = make(MISTRAL, family_root)
    assert package_path(tmp_path, "m", "none", checkpoint) == tmp_path / "coreml" / "m-none.mlpackage"
    assert package_path(tmp_path, "e", "none", minilm_dir, limit=1000).suffix == ".mlpackage"  # encoders: one
    folder = package_path(tmp_path, "m", "int8", checkpoint, limit=1000)
    assert folder == tmp_path / "coreml" / "m-int8"
    convert_package(str(checkpoint), folder, "int8", [16, 32], True, 64)
    assert len(read_chunked_model(folder).parts) >= 2
    logits = load_package(folder, use_coreml=False).prefill([1, 2, 3])
    assert logits.shape[0] == 3 and np.isfinite(logits).all()


@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac Core ML runs")
def test_coreml_is_skipped_with_its_reason_off_macos(bench):
    _, document, _ = bench
    for model in ("gpt2", "llama", "bert"):
        (coreml,) = _find(document["records"], model=model, backend="coreml")
        assert coreml["status"] == "skipped" and "macOS" in coreml["reason"]


def test_table_and_markdown_are_written(bench):
    out, _, terminal = bench
    md = (out / "bench.md").read_text()
    assert "## gpt2" in md and "## bert" in md and "| backend |" in md
    assert "gpt2" in terminal and "torch-ane" in terminal and "macOS" in terminal


def _tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """(headers, rows) of every markdown table."""
    tables, lines = [], md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|---"):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split(" | ")])
            tables.append(([c.strip() for c in line.strip("|").split(" | ")], rows))
    return tables


def _bounds(shown: str) -> tuple[float, float]:
    """The interval of values that print as `shown` (half a unit of its last digit either side)."""
    mantissa = shown.lower().split("e")[0]
    unit = 10.0 ** -(len(mantissa.split(".")[1]) if "." in mantissa else 0)
    if "e" in shown.lower():
        unit *= 10.0 ** int(shown.lower().split("e")[1])
    return float(shown) - unit / 2, float(shown) + unit / 2


NUMBER = r"[0-9.]+(?:e[+-]?[0-9]+)?"
VERSUS = re.compile(rf"^(?P<ours>{NUMBER}) \((?P<who>[\w-]+) (?P<theirs>{NUMBER}), (?P<ratio>{NUMBER})x\)$")
QUOTIENT = re.compile(rf"(?P<a>{NUMBER}) / (?P<b>{NUMBER}) = (?P<ratio>{NUMBER})x")


def _agrees(ratio: str, top: str, bottom: str) -> bool:
    """Whether the printed ratio is top / bottom, given that all three are rounded for print."""
    (t0, t1), (b0, b1), (r0, r1) = _bounds(top), _bounds(bottom), _bounds(ratio)
    return r0 <= t1 / b0 and t0 / b1 <= r1


def test_every_ratio_in_the_table_is_that_of_the_times_in_its_row(bench):
    """No ratio beside figures it was not computed from: "prefill 16: 3.98 ms (ref 4.26, 1.07x)" is
    4.26 / 3.98 whatever the reference's own row says, and "12.6 / 4.66 = 2.70x" is what it reads."""
    out, document, _ = bench
    md = (out / "bench.md").read_text()
    checked = 0
    for headers, rows in _tables(md):
        for row in rows:
            for header, cell in zip(headers, row, strict=True):
                verified = 0
                if m := VERSUS.match(cell):
                    ours, theirs = m["ours"], m["theirs"]
                    top, bottom = (ours, theirs) if "tok/s" in header else (theirs, ours)
                    assert _agrees(m["ratio"], top, bottom), (header, cell)
                    verified += 1
                for m in QUOTIENT.finditer(cell):
                    assert _agrees(m["ratio"], m["a"], m["b"]), (header, cell)
                    verified += 1
                shown = re.findall(rf"(?<![\w.]){NUMBER}x\b", cell)
                assert len(shown) == verified, f"a ratio not computed from figures in its cell: {header}: {cell}"
                checked += verified
    assert checked >= 6  # torch-ane and mlx against the reference, mlx against mlx_lm, reuse ratios
    for r in document["records"]:  # and each record's ratio is that of its own two figures
        if "vs_reference" in r:
            a, b = r["value"], r["reference"]["value"]
            assert r["vs_reference"] == pytest.approx(a / b if r["unit"] == "tokens/s" else b / a)
        if "vs_peer" in r:
            a, b = r["value"], r["vs_peer"]["value"]
            assert r["vs_peer"]["ratio"] == pytest.approx(a / b if r["unit"] == "tokens/s" else b / a)


def test_weight_bytes_come_from_the_file_headers(tmp_path):
    """Parameters counted from the safetensors headers, without loading a tensor: the model's own count
    (the tied head stored and counted once)."""
    from transformers import GPT2LMHeadModel

    from ondevice.bench.runners import parameter_count, weight_bytes

    gpt2 = make_gpt2(tmp_path / "gpt2")
    expected = GPT2LMHeadModel.from_pretrained(gpt2).num_parameters()
    assert parameter_count(gpt2) == expected
    assert weight_bytes(parameter_count(gpt2), "fp16") == 2 * expected


def test_plot_is_written(bench):
    out, _, _ = bench
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_job_becomes_an_error_record(tmp_path):
    from ondevice.bench.worker import run_job

    (r,) = run_job(
        {
            "job": "backend",
            "model": "missing",
            "backend": "torch-ane",
            "precision": "fp32",
            "checkpoint": str(tmp_path / "nothing-here"),
            "threads": 1,
        }
    )
    assert r["status"] == "error" and r["reason"]
