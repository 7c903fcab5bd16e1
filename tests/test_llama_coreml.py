"""Core ML packages of the Llama family, checked on Linux: each package runs through the numpy evaluator of its
ML program against transformers, and through the static ANE rules.

One random checkpoint per dialect, in the shapes that break naive conversions: grouped-query heads 3:1
(llama, untied), one key/value head (mistral), biases and a tied head (qwen2), q/k norm with a head width
that is not hidden / heads and a tied vocabulary of two head chunks (qwen3: 20,000 tokens, above the ANE's
16,384), Llama 3 RoPE scaling with a short original context (llama3). Every checkpoint carries a tiny
word-level tokenizer, so that it travels inside the package and GPTQ calibration can read text.

Bounds: fp16 packages meet parity.TOLERANCES["fp16"] (cosine >= 0.999, max error <= 2e-2 of the output's
scale) and reproduce transformers' greedy tokens decoded through the package's cache (state or io);
compressed packages meet ondevice.verify.COMPRESSED_TOLERANCES (greedy agreement reported, not required).
Each package is converted once per module."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from canonical.errors import CheckpointError, ConversionError, InputError
from convert import coreml_calibrate
from convert.checkpoint import load_checkpoint
from convert.coreml import IOS_WEIGHT_LIMIT, CoreMLOptions, check_size, convert_to_coreml, estimated_weight_bytes
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.mil_eval import MilProgram
from coreml_runtime.package import read_metadata, weights_path
from ondevice.backends.coreml import load_package
from ondevice.cli import app
from ondevice.parity import TOLERANCES
from ondevice.verify import COMPRESSED_TOLERANCES, verify_package
from tests.checkpoints import make_llama

CONTEXT, PREFILL, SEQ, STEPS = 96, 16, 32, 24  # SEQ + STEPS <= CONTEXT
WORDS = ["the", "a", "one", "two", "three", "red", "green", "blue", "cat", "dog", "bird", "fish", "runs", "jumps",
         "sleeps", "eats", "sees", "finds", "big", "small", "old", "new", "happy", "sad", "fast", "slow", "under",
         "over", "near", "far", "house", "tree", "river", "hill", "sun", "moon", "rain", "snow", "day", "night", "and",
         "but", "then", "so", "because", "when", "where", "who", "what"]
_LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=16)
# name: (dialect, make_llama overrides). Defaults: 2 layers, width 48, 6 heads of 8 sharing 2 kv heads, vocab 211.
DIALECTS = {
    "llama": ("llama", {}),
    "mistral": ("mistral", dict(num_key_value_heads=1)),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3-tied-wide": ("qwen3", dict(head_dim=16, num_attention_heads=4, num_key_value_heads=2, vocab_size=20000,
                                      tie_word_embeddings=True)),
    "llama3-rope": ("llama", dict(rope_parameters=_LLAMA3_ROPE)),
}
STATE = CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,))
# name: (dialect, options). The calibration text of "-gptq" rows is filled in by the fixture.
VARIANTS = {
    **{f"{name}-state-fp16": (name, STATE) for name in DIALECTS},
    "llama3-rope-io-ios17": ("llama3-rope", dataclasses.replace(STATE, kv_cache="io", target="iOS17")),
    "qwen3-tied-wide-io-ios16": ("qwen3-tied-wide", dataclasses.replace(STATE, kv_cache="io", target="iOS16")),
    "qwen2-tied-int8": ("qwen2-tied", dataclasses.replace(STATE, compress="int8")),
    "qwen2-tied-int4": ("qwen2-tied", dataclasses.replace(STATE, compress="int4")),
    "qwen2-tied-palettize4": ("qwen2-tied", dataclasses.replace(STATE, compress="palettize4")),
    "mistral-palettize6": ("mistral", dataclasses.replace(STATE, compress="palettize6")),
    "llama-int4-gptq": ("llama", dataclasses.replace(STATE, compress="int4")),
}
# Measured: on qwen3-tied-wide (20,000 random logits per step) free-running greedy departs at step 17 of 24, where
# the reference's top two differ by 0.0043 logits, 1.1 fp16 spacings at that magnitude; transformers' own ranking
# there is below fp16 resolution, and our torch-ane backend in fp16 on the CPU departs at the same step. Teacher-
# forced along the reference's path the package agrees on 23 of 24 steps, the other being that tie.
NEAR_TIES = {"qwen3-tied-wide-state-fp16": 17, "qwen3-tied-wide-io-ios16": 17}
EMITS = {"int8": "constexpr_blockwise_shift_scale", "int4": "constexpr_blockwise_shift_scale",
         "palettize4": "constexpr_lut_to_dense", "palettize6": "constexpr_lut_to_dense"}


def _text(lines: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(lines)) + "\n"


def add_tokenizer(directory, vocab_size: int) -> None:
    """A word-level tokenizer over WORDS (ids 3..), padded with unused tokens to the model's vocabulary; bos 1 and
    eos 2 as make_llama's config has them. Saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    vocab |= {f"<unused{i}>": i for i in range(len(vocab), vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint directories by dialect name, made lazily (once each)."""
    made: dict[str, object] = {}
    root = tmp_path_factory.mktemp("llama-coreml")

    def get(name: str):
        if name not in made:
            dialect, overrides = DIALECTS[name]
            directory = make_llama(root / name, dialect, seed=3, **overrides)
            add_tokenizer(directory, overrides.get("vocab_size", 211))
            made[name] = directory
        return made[name]

    return get


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "train.txt"
    path.write_text(_text(40))
    return path


@pytest.fixture(scope="module")
def packages(tmp_path_factory, checkpoints, calibration_text):
    """(package, checkpoint) by variant name, converted lazily (once each)."""
    built: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("llama-packages")

    def get(name: str):
        if name not in built:
            dialect, options = VARIANTS[name]
            checkpoint = checkpoints(dialect)
            with pytest.MonkeyPatch.context() as patch:
                if name.endswith("-gptq"):
                    options = dataclasses.replace(options, calibration_text=calibration_text)
                    # 16 windows of 160 tokens, not 128: the test checks the path, not the calibration's quality
                    patch.setattr(coreml_calibrate, "CALIBRATION_WINDOWS", 16)
                built[name] = (convert_to_coreml(checkpoint, root / f"{name}.mlpackage", options, progress=False),
                               checkpoint)
        return built[name]

    return get


@pytest.mark.parametrize("name", list(VARIANTS))
def test_package_matches_transformers(packages, name):
    package, checkpoint = packages(name)
    report = verify_package(str(package), str(checkpoint), seq_len=SEQ, greedy_steps=STEPS)
    options = VARIANTS[name][1]
    compressed = options.compress != "none"
    tol = COMPRESSED_TOLERANCES[options.compress] if compressed else TOLERANCES["fp16"]
    assert report.tolerance == tol
    (c,) = report.comparisons
    same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
    print(f"{name}: rel err {c.rel_max_abs:.2e}, cosine {c.cosine:.6f}, greedy {same}/{STEPS}")
    assert c.cosine >= tol.cosine and c.rel_max_abs <= tol.rel_max_abs, (name, c)
    assert len(report.greedy_ours) == STEPS
    if compressed:
        return
    if name not in NEAR_TIES:
        # Prefill, then STEPS decode steps through the package's cache reproduce transformers' greedy tokens.
        assert report.greedy_ours == report.greedy_reference, name
        assert report.passed
        return
    # Free-running greedy departs from transformers' at a near-tie of the reference, no earlier than measured.
    first = next(i for i, (a, b) in enumerate(zip(report.greedy_ours, report.greedy_reference, strict=True)) if a != b)
    assert first >= NEAR_TIES[name], (name, first)
    ckpt = load_checkpoint(checkpoint)
    prompt = np.random.default_rng(0).integers(0, ckpt.config.vocab_size, size=SEQ).tolist()  # verify's prompt
    from ondevice.reference import load_reference

    logits = load_reference(ckpt).prefill(prompt + report.greedy_reference[:first])[-1]
    second, top = np.sort(logits.astype(np.float64))[-2:]
    print(f"{name}: first departure at step {first}, reference margin {top - second:.4f} "
          f"(fp16 spacing {float(np.spacing(np.float16(top))):.4f})")
    assert top - second < 2 * float(np.spacing(np.float16(top))), (name, top - second)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_ane_rule_violations_in_prefill(packages, name):
    """Prefill (or the one function of an io package at its prefill length) breaks no ANE rule; decode's every
    activation is (1, C, 1, 1), a size-1 last axis that single-token decode cannot avoid."""
    package, _ = packages(name)
    report = inspect_package(package)
    assert not [str(v) for v in report.violations if v.function != "decode"]
    assert all(v.rule == "size-1 last axis" for v in report.violations), report.violations
    assert set(report.functions) == ({"main"} if VARIANTS[name][1].kv_cache == "io" else {"prefill", "decode"})


@pytest.mark.parametrize("name", [n for n, (_, o) in VARIANTS.items() if o.compress != "none"])
def test_compression_emits_its_op(packages, name):
    package, _ = packages(name)
    ops = {op.op_type for fn in MilProgram(package).functions.values() for op in fn.operations}
    assert EMITS[VARIANTS[name][1].compress] in ops
    assert {"int8", "uint8", "int4", "uint4", "uint6"} & set(inspect_package(package).weight_bytes)


def test_interface_tokenizer_and_metadata(packages):
    """The same interface as GPT-2's packages; the tokenizer inside; the Llama config round-trips."""
    from tokenizers import Tokenizer

    package, checkpoint = packages("llama-state-fp16")
    meta = read_metadata(package)
    assert meta["architecture"] == "llama" and meta["functions"] == "prefill,decode" and meta["kv_cache"] == "state"
    interface = json.loads(meta["interface"])
    assert interface["prefill"]["inputs"] == ["input_ids", "position"]
    assert interface["decode"]["states"] == ["key_cache", "value_cache"]
    assert interface["prefill"]["outputs"] == ["logits_0"]
    report = inspect_package(package)
    # The cache holds the 2 key/value heads of 8 channels only (GQA), not the 6 query heads.
    assert str(report.functions["decode"].states[0]) == f"key_cache [2, 16, 1, {CONTEXT}] fp16"
    lm = load_package(package)
    assert lm.config == load_checkpoint(checkpoint).config and lm.config.num_kv_heads == 2
    files = json.loads(meta["tokenizer_files"])
    tokenizer_json = next(package / f for f in files if f.endswith("tokenizer.json"))
    assert Tokenizer.from_file(str(tokenizer_json)).encode("the red cat").ids == [3, 8, 11]


def test_io_packages_take_enumerated_lengths(packages):
    """iOS 16/17: one function, the cache as inputs and outputs, input_ids of 1 or PREFILL tokens."""
    package, _ = packages("llama3-rope-io-ios17")
    interface = json.loads(read_metadata(package)["interface"])["main"]
    assert interface["inputs"] == ["input_ids", "position", "key_cache", "value_cache"]
    assert interface["outputs"] == ["logits_0", "key_cache_out", "value_cache_out"]
    spec = MilProgram(package).spec.description.input[0].type.multiArrayType
    assert sorted(tuple(s.shape) for s in spec.enumeratedShapes.shapes) == [(1, 1), (1, PREFILL)]


def test_wide_tied_vocabulary_is_two_chunks_sharing_one_table(packages):
    """Rule 7 with a tied head: 20,000 tokens come out as logits_0 (16,384) and logits_1 (3,616), and each chunk's
    constant feeds both the embedding gather and the head's matmul."""
    package, _ = packages("qwen3-tied-wide-state-fp16")
    outputs = inspect_package(package).functions["prefill"].outputs
    assert [(f.name, f.shape[1]) for f in outputs] == [("logits_0", 16384), ("logits_1", 3616)]
    program = MilProgram(package)
    for fn in program.functions.values():
        tables = [op for op in fn.operations if op.op_type == "const" and "lm_head" in op.name]
        assert [op.outputs[0].shape for op in tables] == [(16384, 48), (3616, 48)]
        for op in tables:
            assert {child.op_type for child in op.outputs[0].child_ops} == {"gather", "matmul"}


@pytest.mark.parametrize("name", ["qwen2-tied-state-fp16", "qwen3-tied-wide-state-fp16", "llama-state-fp16"])
def test_weights_are_stored_once(packages, name):
    """weight.bin within 10% of the parameters (a tied table once) at 2 bytes each: the prefill and decode
    functions share one copy, and a tied head is the embedding's constant."""
    package, checkpoint = packages(name)
    ckpt = load_checkpoint(checkpoint)
    tied = ckpt.config.tie_word_embeddings
    params = sum(t.numel() for n, t in ckpt.weights.items() if not (tied and n == "lm_head.weight"))
    size = weights_path(package).stat().st_size
    print(f"{name}: weight.bin {size} bytes for {params} parameters ({size / (2 * params):.3f} x 2 bytes)")
    assert abs(size - 2 * params) <= 0.1 * 2 * params, (size, params)
    assert estimated_weight_bytes(ckpt.config, ckpt.weights, "fp16", "none") == pytest.approx(size, rel=0.1)


def test_rope_tables_hold_the_context_only(packages):
    """The RoPE tables span max_positions (160) in the model; the package keeps its CONTEXT rows."""
    package, _ = packages("llama3-rope-state-fp16")
    program = MilProgram(package)
    shapes = {op.outputs[0].shape for op in program.functions["prefill"].operations
              if op.op_type == "const" and "rotary" in op.name}
    assert shapes == {(8, CONTEXT)}, shapes


def test_gptq_calibration_changes_the_blocks_only(packages):
    """GPTQ ran on the Llama blocks (RoPE passed for each window's positions): the calibrated package's block
    weights are uint4 on GPTQ's grid, differ from rounding's, and the head stays at int8."""
    calibrated, _ = packages("llama-int4-gptq")
    rounded, _ = packages("qwen2-tied-int4")
    meta = read_metadata(calibrated)
    assert meta["calibration"] == "gptq:train.txt" and meta["compression"] == "int4"
    weights = inspect_package(calibrated).weight_bytes
    assert weights.get("uint4", 0) > 0 and weights.get("int8", 0) > 0
    assert inspect_package(rounded).weight_bytes.get("int4", 0) > 0  # rounding stores signed int4


def test_state_persists_and_rewinds(packages):
    package, _ = packages("mistral-state-fp16")
    lm = load_package(package)
    lm.prefill([5, 6, 7])
    after_prompt = lm.decode(8)
    lm.trim(0)
    assert np.abs(after_prompt - lm.prefill([8])[0]).max() > 1e-2  # decode read the cache the prefill wrote
    lm.trim(0)
    lm.prefill([5, 6, 7, 9])
    lm.trim(3)
    np.testing.assert_array_equal(lm.decode(8), after_prompt)


def test_prefill_near_the_end_of_the_context_stays_in_the_tables(packages):
    """A padded prefill chunk must not reach past the package's RoPE rows: near the end it goes token by token."""
    package, checkpoint = packages("llama-state-fp16")
    from ondevice.reference import load_reference

    lm, reference = load_package(package), load_reference(load_checkpoint(checkpoint))
    ids = np.random.default_rng(1).integers(0, 211, size=CONTEXT - 3).tolist()
    got, want = lm.prefill(ids), reference.prefill(ids)
    assert got.shape == want.shape
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= 0.999


# ---- refusals: one line, nothing written ----


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def _one_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_mismatched_shapes_are_refused(checkpoints, tmp_path):
    """config.json and the weights disagree (hidden size): refused while reading, one line, exit 2, nothing
    written; a package verified against a reference of another vocabulary: refused likewise."""
    import shutil

    source = checkpoints("llama")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 72
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="intermediate_size"):
        convert_to_coreml(broken, out / "x.mlpackage", STATE, progress=False)
    line = _one_line(CliRunner().invoke(app, ["convert", str(broken), "--to", "coreml",
                                              "--out", str(out / "x.mlpackage")]))
    assert "intermediate_size" in line
    assert _listing(out) == []


def test_package_against_a_mismatched_reference(packages, checkpoints):
    package, _ = packages("qwen3-tied-wide-state-fp16")
    with pytest.raises(InputError, match="does not match the reference"):
        verify_package(str(package), str(checkpoints("llama")))
    line = _one_line(CliRunner().invoke(app, ["verify", str(package), "--reference", str(checkpoints("llama"))]))
    assert "does not match" in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CoreMLOptions(context=500), "context 500 must be in 2..160"),
        (CoreMLOptions(context=32, seq_lens=(64,)), "prefill length 64 exceeds the context of 32"),
        (CoreMLOptions(target="iOS17"), "KV cache 'state' needs iOS18/macOS15"),
        (CoreMLOptions(target="iOS17", kv_cache="io", compress="int4"), "int4 per-block quantization needs iOS18"),
        (CoreMLOptions(compress="int8", calibration_text=__file__), "calibration text applies to causal LMs"),
    ],
)
def test_bad_options_are_refused_before_writing(checkpoints, tmp_path, options, message):
    with pytest.raises(ConversionError, match=message.replace("(", r"\(")):
        convert_to_coreml(checkpoints("llama"), tmp_path / "out.mlpackage", options, progress=False)
    assert _listing(tmp_path) == []


def test_large_ios_package_is_refused_unless_allowed(checkpoints, tmp_path, monkeypatch):
    """Above the limit an iOS package is refused in one line naming its size and the compression that fits;
    --allow-large or a macOS target writes it. The limit is lowered to the tiny model's scale here."""
    import convert.coreml as coreml

    ckpt = load_checkpoint(checkpoints("qwen3-tied-wide"))
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

    smollm = weights(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                     intermediate_size=1536)
    qwen = weights(vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                   intermediate_size=3072, qk_norm=True)
    params = {name: sum(t.numel() for t in w.values()) for name, (_, w) in (("smollm", smollm), ("qwen", qwen))}
    assert params["smollm"] == 134_515_008 and params["qwen"] == 596_049_920
    assert estimated_weight_bytes(*smollm, "fp16", "none") == 2 * params["smollm"]  # 269 MB: fits
    check_size(*smollm, STATE)
    with pytest.raises(ConversionError, match=r"about 1\.19 GB \(fp16\).*--compress int8 would make them about 0\.60"):
        check_size(*qwen, STATE)
    assert IOS_WEIGHT_LIMIT == 1_000_000_000

