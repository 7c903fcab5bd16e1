"""The Core ML test packages of every registered family, and the checks every package meets: one factory, shared by
test_coreml_packages.py (fp16 and fp32) and test_coreml_compressed.py (int8, int4, palettized, GPTQ), which run side
by side on two workers.

Each option value is converted once, on the tiniest models (not the cartesian product): a package per variant of
VARIANTS, built lazily by the module that reads it. A family registered without an entry here gets a state-cache
fp16 package (causal LMs) or a fixed-length fp16 package (encoders) of its default test checkpoint.

Bounds: uncompressed packages meet parity.TOLERANCES["fp16"] (fp32 with an io cache: ["fp32"]) and reproduce the
reference's greedy tokens decoded through the package's cache (state or io), but where a measured near-tie of the
reference says otherwise (`near_tie`); compressed packages meet parity.TOLERANCES of their compression, their greedy
agreement reported and, where measured, held to a floor (`min_greedy`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convert import coreml_calibrate
from convert.checkpoint import load_checkpoint
from convert.coreml import CoreMLOptions, convert_to_coreml
from convert.registry import FAMILIES
from coreml_runtime.ane_rules import inspect_package
from coreml_runtime.interface import ATTENTION_MASK, POSITION, TOKEN_TYPE_IDS
from coreml_runtime.mil_eval import MilProgram
from ondevice.parity import TOLERANCES
from ondevice.verify import verify_package
from tests.families import TORCH_ANE, Case, default_case, make

CONTEXT, PREFILL, SEQ = 96, 16, 32  # a prompt of SEQ tokens, then up to 64 decode steps, fit the CONTEXT

STATE = CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,))
EMITS = {"int8": "constexpr_blockwise_shift_scale", "int4": "constexpr_blockwise_shift_scale",
         "palettize4": "constexpr_lut_to_dense", "palettize6": "constexpr_lut_to_dense"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Variant:
    checkpoint: Case | str  # a family case, or the name of a session fixture (the real MiniLM)
    options: CoreMLOptions
    emits: str | None = None  # the op the compression must emit where it differs from EMITS (iOS 17's int8)
    calibrate: bool = False  # GPTQ on a calibration text written beside the package
    min_greedy: int | None = None  # compressed: the free-running greedy agreement measured (of STEPS), a floor
    near_tie: int | None = None  # uncompressed: the first step where a measured near-tie may turn greedy decoding
    steps: int = 16  # greedy steps decoded through the package's cache

    @property
    def compressed(self) -> bool:
        return self.options.compress != "none"

    @property
    def family(self) -> str:
        return self.checkpoint.family if isinstance(self.checkpoint, Case) else "bert"


def _io(**changes) -> CoreMLOptions:
    return dataclasses.replace(STATE, kv_cache="io", **changes)


def _compressed(scheme: str, **changes) -> CoreMLOptions:
    return dataclasses.replace(STATE, compress=scheme, **changes)


GPT2 = Case("gpt2", "base")
# The Llama family's checkpoints, in the shapes that break naive conversions: grouped-query heads 3:1 (llama,
# untied), one key/value head (mistral), biases and a tied head (qwen2), q/k norm with a head width that is not
# hidden / heads and a tied vocabulary of two head chunks (qwen3: 20,000 tokens, above the ANE's 16,384), Llama 3
# RoPE scaling with a short original context (llama3). Each carries a tokenizer, which travels inside the package.
LLAMA = Case("llama", "llama, GQA 3:1", seed=3, tokenizer=True)
MISTRAL = Case("llama", "mistral, one kv head", dict(dialect="mistral", num_key_value_heads=1), seed=3, tokenizer=True)
QWEN2 = Case("llama", "qwen2, biases, tied", dict(dialect="qwen2", tie_word_embeddings=True), seed=3, tokenizer=True)
QWEN3 = Case("llama", "qwen3, q/k norm, head_dim 16 of width 48, tied, 20,000 tokens",
             dict(dialect="qwen3", head_dim=16, num_attention_heads=4, num_key_value_heads=2, vocab_size=20000,
                  tie_word_embeddings=True), seed=3, tokenizer=True)  # fmt: skip
LLAMA3 = Case("llama", "llama3 rope, original context 16 x8", dict(rope_parameters=TORCH_ANE["llama"][2].overrides[
    "rope_parameters"]), seed=3, tokenizer=True)  # fmt: skip

GEMMA3 = Case("gemma3", "270M-shaped, window 16", seed=3, randomise_norms=True, tokenizer=True)

# Measured: on QWEN3 (20,000 random logits per step) free-running greedy departs at step 17 of 24, where the
# reference's top two differ by 0.0043 logits, 1.1 fp16 spacings at that magnitude; transformers' own ranking there
# is below fp16 resolution, and our torch-ane backend in fp16 on the CPU departs at the same step. On another
# machine (another BLAS) the same package kept all 24 tokens.
QWEN3_NEAR_TIE = 17
# Measured on the random GPT-2: int4 3/16, palettize4 9/16 free-running greedy tokens agree (cosine 0.954 and 0.950).
# 16 levels per weight are too coarse for a 64-wide random model whose weights all matter, and its logits are
# near-ties everywhere; tests/test_coreml_four_bit.py measures 4-bit on the trained keyboard model instead. Full
# agreement is NOT met at 4 bits.
VARIANTS: dict[str, dict[str, Variant]] = {
    "gpt2": {
        "gpt2-state-fp16": Variant(GPT2, STATE),
        "gpt2-io-fp32-ios18": Variant(GPT2, _io(dtype="fp32")),
        "gpt2-io-ios17-int8": Variant(GPT2, _io(target="iOS17", compress="int8"), emits="constexpr_affine_dequantize",
                                      min_greedy=16),
        "gpt2-int8": Variant(GPT2, _compressed("int8"), min_greedy=16),
        "gpt2-int4": Variant(GPT2, _compressed("int4"), min_greedy=3),
        "gpt2-palettize4": Variant(GPT2, _compressed("palettize4"), min_greedy=9),
        "gpt2-palettize6": Variant(GPT2, _compressed("palettize6", target="macOS15"), min_greedy=16),
    },
    "bert": {
        "bert-mlm-enumerated": Variant(Case("bert", "bert"), CoreMLOptions(seq_lens=(16, SEQ))),
        "distilbert-mlm": Variant(Case("bert", "distilbert", dict(dialect="distilbert")),
                                  CoreMLOptions(seq_lens=(SEQ,), target="iOS16")),
        "minilm": Variant("minilm_dir", CoreMLOptions(seq_lens=(SEQ,))),
        "minilm-palettize6-ios16": Variant("minilm_dir", CoreMLOptions(seq_lens=(SEQ,), target="iOS16",
                                                                       compress="palettize6")),
    },
    "llama": {  # 24 greedy steps: past the qwen3 checkpoint's near-tie at step 17
        "llama-state-fp16": Variant(LLAMA, STATE, steps=24),
        "mistral-state-fp16": Variant(MISTRAL, STATE, steps=24),
        "qwen2-tied-state-fp16": Variant(QWEN2, STATE, steps=24),
        "qwen3-tied-wide-state-fp16": Variant(QWEN3, STATE, near_tie=QWEN3_NEAR_TIE, steps=24),
        "llama3-rope-state-fp16": Variant(LLAMA3, STATE, steps=24),
        "llama3-rope-io-ios17": Variant(LLAMA3, _io(target="iOS17"), steps=24),
        "qwen3-tied-wide-io-ios16": Variant(QWEN3, _io(target="iOS16"), near_tie=QWEN3_NEAR_TIE, steps=24),
        "qwen2-tied-int8": Variant(QWEN2, _compressed("int8"), steps=24),
        "qwen2-tied-int4": Variant(QWEN2, _compressed("int4"), steps=24),
        "qwen2-tied-palettize4": Variant(QWEN2, _compressed("palettize4"), steps=24),
        "mistral-palettize6": Variant(MISTRAL, _compressed("palettize6"), steps=24),
        "llama-int4-gptq": Variant(LLAMA, _compressed("int4"), calibrate=True, steps=24),
    },
    # Gemma 3, window 16: the sliding layers keep a ring of 16 + PREFILL = 32 slots; the prompt (32) and 40 greedy
    # steps run 72 tokens through it (it wraps twice), the global layer keeps all 96.
    "gemma3": {
        "gemma3-state-fp16": Variant(GEMMA3, STATE, steps=40),
        "gemma3-io-ios17": Variant(GEMMA3, _io(target="iOS17"), steps=40),
    },
}  # fmt: skip


def variants(compressed: bool | None = None) -> dict[str, Variant]:
    """Every registered family's variants (a default one where VARIANTS has none), compressed or not."""
    found: dict[str, Variant] = {}
    for family in FAMILIES.values():
        if family.ane_model is None:
            continue
        table = VARIANTS.get(family.name)
        if table is None:
            options = STATE if family.is_causal else CoreMLOptions(seq_lens=(SEQ,))
            table = {f"{family.name}-default": Variant(default_case(family), options)}
        found |= {name: v for name, v in table.items() if compressed is None or v.compressed == compressed}
    return found


def calibration_text(path: Path) -> Path:
    """A few dozen lines of the tiny tokenizer's sentences (the checkpoints' tokenizer knows their words)."""
    from tests.tiny_tokenizer import SENTENCES

    rng = np.random.default_rng(0)
    words = " ".join(SENTENCES).split()
    path.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(40)) + "\n")
    return path


def package_maker(root: Path, request: pytest.FixtureRequest, family_root: Path) -> Callable[[str], tuple[Path, Path]]:
    """(package, checkpoint) by variant name, converted lazily (once each) under `root`."""
    built: dict[str, tuple[Path, Path]] = {}
    every = variants()

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            variant = every[name]
            checkpoint = (make(variant.checkpoint, family_root) if isinstance(variant.checkpoint, Case)
                          else request.getfixturevalue(variant.checkpoint))  # fmt: skip
            options = variant.options
            with pytest.MonkeyPatch.context() as patch:
                if variant.calibrate:
                    options = dataclasses.replace(options, calibration_text=calibration_text(root / "train.txt"))
                    # 16 windows, not 128: the test checks the path, not the calibration's quality
                    patch.setattr(coreml_calibrate, "CALIBRATION_WINDOWS", 16)
                package = convert_to_coreml(checkpoint, root / f"{name}.mlpackage", options, progress=False)
            built[name] = (package, checkpoint)
        return built[name]

    return get


def _tolerance(variant: Variant):
    options = variant.options
    if variant.compressed:
        return TOLERANCES[options.compress]
    return TOLERANCES["fp32" if options.dtype == "fp32" and options.kv_cache == "io" else "fp16"]


def check_matches_reference(packages, name: str) -> None:
    """verify_package on the variant: within its format's bounds; causal LMs: prefill, then its decode steps
    through the package's cache, reproduce the reference's greedy tokens (uncompressed) or keep the measured
    agreement (compressed)."""
    variant = variants()[name]
    package, checkpoint = packages(name)
    report = verify_package(str(package), str(checkpoint), seq_len=SEQ, greedy_steps=variant.steps)
    tol = _tolerance(variant)
    assert report.tolerance == tol
    for c in report.comparisons:
        assert c.cosine >= tol.cosine and c.rel_max_abs <= tol.rel_max_abs, (name, c)
    if not load_checkpoint(checkpoint).config.is_causal:
        assert report.passed, report
        return
    assert len(report.greedy_ours) == variant.steps
    same = sum(a == b for a, b in zip(report.greedy_ours, report.greedy_reference, strict=True))
    if variant.compressed:
        assert same >= (variant.min_greedy or 0), (name, same)
        return
    first = next((i for i, (a, b) in enumerate(zip(report.greedy_ours, report.greedy_reference, strict=True))
                  if a != b), None)  # fmt: skip
    if first is None:
        assert report.passed
        return
    # A departure only at (or after) a measured near-tie of the reference, one that fp16 cannot resolve.
    assert variant.near_tie is not None and first >= variant.near_tie, (name, first)
    check_near_tie(checkpoint, report.greedy_reference[:first])


def check_near_tie(checkpoint: Path, path: list[int]) -> None:
    """The reference's top two logits after verify's prompt and `path` are within two fp16 spacings."""
    from ondevice.reference import load_reference

    ckpt = load_checkpoint(checkpoint)
    prompt = np.random.default_rng(0).integers(0, ckpt.config.vocab_size, size=SEQ).tolist()  # verify's prompt
    logits = load_reference(ckpt).prefill(prompt + path)[-1]
    second, top = np.sort(logits.astype(np.float64))[-2:]
    assert top - second < 2 * float(np.spacing(np.float16(top))), top - second


def check_ane_rules(packages, name: str) -> None:
    """No violation anywhere but in a causal LM's decode function, whose every activation is (1, C, 1, 1): one
    token is a size-1 sequence axis in the (B, C, 1, S) layout, unavoidable for single-token decode; and an fp32
    package's compute is fp32 by request."""
    options = variants()[name].options
    package, _ = packages(name)
    report = inspect_package(package)
    fp32 = options.dtype == "fp32"
    for v in report.violations:
        assert (v.function == "decode" and v.rule == "size-1 last axis") or (fp32 and v.rule == "non-fp16 compute"), v
    assert not [v for v in report.violations if v.rule in ("rank > 4", "dimension > 16384", "not on ANE")]
    causal = load_checkpoint(packages(name)[1]).config.is_causal
    assert set(report.functions) == ({"prefill", "decode"} if causal and multifunction(options) else {"main"})


def multifunction(options: CoreMLOptions) -> bool:
    """A causal LM on iOS 18 / macOS 15 is two functions (prefill, decode) sharing weights; before, one `main`."""
    return options.target in ("iOS18", "macOS15")


def check_compression_emits_its_op(packages, name: str) -> None:
    variant = variants()[name]
    package, _ = packages(name)
    ops = {op.op_type for fn in MilProgram(package).functions.values() for op in fn.operations}
    assert (variant.emits or EMITS[variant.options.compress]) in ops
    weights = inspect_package(package).weight_bytes
    assert {"int8", "uint8", "int4", "uint4", "uint6"} & set(weights), weights  # the blob holds compressed records


def check_same_package(ours: Path, theirs: Path) -> None:
    """Two packages of one conversion are the same: weight.bin byte for byte, the same description (functions, their
    interfaces, metadata), the same ops in the same order in every function (their names may differ: coremltools
    numbers some by a process-wide counter), and the evaluator's outputs and state, bit for bit, on the same
    inputs."""
    from coremltools.converters.mil.mil import types

    from coreml_runtime.package import weights_path

    assert weights_path(ours).read_bytes() == weights_path(theirs).read_bytes()
    a, b = MilProgram(ours), MilProgram(theirs)
    assert a.spec.description == b.spec.description  # functions, their inputs, outputs and states; metadata
    assert set(a.functions) == set(b.functions)
    rng = np.random.default_rng(0)
    for name, function in a.functions.items():
        assert [op.op_type for op in function.operations] == [op.op_type for op in b.functions[name].operations]
        inputs = {}
        for key, var in function.inputs.items():
            if types.is_state(var.sym_type):
                continue
            dtype = types.nptype_from_builtin(var.dtype)
            if key == ATTENTION_MASK:
                inputs[key] = np.ones(var.shape, dtype)
            elif key == TOKEN_TYPE_IDS:
                inputs[key] = np.zeros(var.shape, dtype)
            elif key == POSITION:
                inputs[key] = np.array([3], dtype)
            elif np.issubdtype(dtype, np.integer):
                inputs[key] = rng.integers(0, 50, size=var.shape).astype(dtype)
            else:  # an io cache
                inputs[key] = rng.standard_normal(var.shape).astype(dtype)
        state_a, state_b = a.make_state(name), b.make_state(name)
        out_a, out_b = a.predict(inputs, name, state_a), b.predict(inputs, name, state_b)
        assert out_a.keys() == out_b.keys()
        for key in out_a:
            assert np.array_equal(out_a[key], out_b[key]), (name, key)
        for key in state_a:
            assert np.array_equal(state_a[key], state_b[key]), (name, key)


def prefill_then_decode(package: Path) -> tuple[MilProgram, list[np.ndarray]]:
    """A freshly loaded evaluator of `package` run through a PREFILL-token prompt and one decode step: the program
    (for what it holds afterwards) and every output of both calls, in a fixed order."""
    prompt = {"input_ids": np.arange(3, 3 + PREFILL, dtype=np.int32)[None], "position": np.array([0], np.int32)}
    step = {"input_ids": np.array([[7]], np.int32), "position": np.array([PREFILL], np.int32)}
    program = MilProgram(package)
    state = program.make_state("prefill")
    first = program.predict(prompt, "prefill", state)
    second = program.predict(step, "decode", state)
    return program, [first[k] for k in sorted(first)] + [second[k] for k in sorted(second)]


def check_fast_path_writes_the_plain_package(packages, name: str, tmp_path: Path) -> None:
    """convert/coreml_fast.py's paths (with the pinned coremltools) change how long a conversion takes, not what it
    writes: the variant converted on coremltools' own path is the same package."""
    from convert import coreml_fast

    if not coreml_fast.pinned():
        pytest.skip(f"coremltools is not {coreml_fast.PINNED_VERSION}: conversion takes the plain path only")
    fast, checkpoint = packages(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coreml_fast, "pinned", lambda: False)
        plain = convert_to_coreml(checkpoint, tmp_path / "plain.mlpackage", variants()[name].options, progress=False)
    check_same_package(fast, plain)
