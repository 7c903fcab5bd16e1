"""`ondevice convert --to mlx` for every registered family with an MLX model, through the command line, on the
checkpoints of tests/families.py (MLX_EXPORT): the directory reads back into the very model it was written from
(fp32, fp16, 4- and 8-bit weights), keeps the reference's parity in fp32, passes `ondevice verify` in the lossless
formats; for families mlx-lm has (the registry's `mlx_lm`), `mlx_lm.load` runs it, with its tokenizer, and gives our
logits, and its names map back to ours. Then what is not a family's: atomic writes, --overwrite, bad options."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from typer.testing import CliRunner

from convert.checkpoint import load_checkpoint
from convert.mlx_checkpoint import load_mlx_checkpoint
from convert.mlx_export import export_mlx
from convert.registry import mlx_lm_of
from ondevice.backends.mlx import load
from ondevice.parity import TOLERANCES, compare
from ondevice.reference import load_reference
from ondevice.runtime import greedy_tokens
from tests.cli import assert_one_line_error, run_cli
from tests.encoders import compare_encoders, encoder_inputs
from tests.families import MLX_EXPORT, cases, ids, make

FP32 = TOLERANCES["fp32"]
GROUP = 32
runner = CliRunner()
EXPORTED = cases(MLX_EXPORT, needs="mlx_model")
MLX_LM = [case for case in EXPORTED if case.registry_entry.mlx_lm is not None and case.is_causal]


class Exported:
    """One case's checkpoint and its command-line exports, each made once, on first use."""

    def __init__(self, case, checkpoint, root):
        self.case, self.checkpoint, self.root = case, checkpoint, root
        self.ckpt = load_checkpoint(checkpoint)
        self.exports: dict[tuple, object] = {}

    def export(self, bits: int | None = None, dtype: str = "fp32"):
        if (bits, dtype) not in self.exports:
            out = self.root / f"mlx-{dtype}-q{bits}"
            quantize = ["--quantize", bits, "--group-size", GROUP] if bits else []
            result = run_cli("convert", self.checkpoint, "--to", "mlx", "--out", out, "--dtype", dtype, *quantize)
            assert result.exit_code == 0, result.output
            self.exports[(bits, dtype)] = out
        return self.exports[(bits, dtype)]

    def ids(self, n: int, seed: int = 0) -> list[int]:
        return np.random.default_rng(seed).integers(0, self.ckpt.config.vocab_size, size=n).tolist()


def _exported(request, family_root, tmp_path_factory) -> Exported:
    case = request.param
    return Exported(case, make(case, family_root), tmp_path_factory.mktemp(case.family))


@pytest.fixture(scope="module", params=EXPORTED, ids=ids(EXPORTED))
def exported(request, family_root, tmp_path_factory) -> Exported:
    return _exported(request, family_root, tmp_path_factory)


@pytest.fixture(scope="module", params=MLX_LM, ids=ids(MLX_LM))
def for_mlx_lm(request, family_root, tmp_path_factory) -> Exported:
    return _exported(request, family_root, tmp_path_factory)


def _outputs(lm, exported: Exported):
    """What the model computes on fixed inputs: logits of a causal LM, every output of an encoder."""
    if exported.ckpt.config.is_causal:
        return lm.prefill(exported.ids(40, seed=2))
    inputs = encoder_inputs(exported.ckpt.config, batch=2, seq=16, seed=2)
    return lm.encode(*inputs)


@pytest.mark.parametrize(("dtype", "bits"), [("fp32", None), ("fp16", None), ("fp32", 4), ("fp16", 8)])
def test_the_export_reads_back_into_the_model_it_was_written_from(exported, dtype, bits):
    out = exported.export(bits, dtype)
    ckpt = load_mlx_checkpoint(out)
    assert ckpt.config == exported.ckpt.config and ckpt.quantization == (
        {"bits": bits, "group_size": GROUP} if bits else None
    )
    assert json.loads((out / "config.json").read_text())["ondevice_mlx"]["dtype"] == dtype
    reloaded = _outputs(load(ckpt, dtype=None), exported)
    direct = _outputs(load(exported.ckpt, dtype=dtype, quantize=bits, group_size=GROUP), exported)
    if isinstance(direct, dict):
        assert reloaded.keys() == direct.keys()
        for name in direct:
            np.testing.assert_array_equal(reloaded[name], direct[name])
    else:
        np.testing.assert_array_equal(reloaded, direct)


def test_an_fp32_export_keeps_the_references_parity(exported):
    ours, reference = load(load_mlx_checkpoint(exported.export()), dtype=None), load_reference(exported.ckpt)
    if not exported.ckpt.config.is_causal:
        compare_encoders(ours, reference, *encoder_inputs(exported.ckpt.config, batch=2, seq=32), FP32)
        return
    ids = exported.ids(65, seed=5)
    assert compare("logits", ours.prefill(ids), reference.prefill(ids)).within(FP32)
    assert greedy_tokens(ours, ids[:8], 32) == greedy_tokens(reference, ids[:8], 32)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_verify_the_export_against_its_checkpoint_passes(exported, dtype):
    """Lossless formats, whose greedy tokens must match too. (Quantized exports of these deliberately sharp random
    models are measured in tests/test_parity_mlx.py: their q8 error is past verify's q8 bound, which was measured
    on milder models.)"""
    result = run_cli("verify", exported.export(None, dtype), "--reference", exported.checkpoint, "--seq-len", 48)
    assert result.exit_code == 0, result.output
    assert f"mlx export {dtype}" in result.output and "PASS" in result.output
    if exported.ckpt.config.is_causal:
        assert "greedy tokens: 16/16 match" in result.output


def test_verify_the_checkpoint_on_the_mlx_backend_passes(exported):
    result = run_cli("verify", exported.checkpoint, "--backend", "mlx", "--seq-len", 48)
    assert result.exit_code == 0, result.output
    assert "mlx fp32" in result.output and "PASS" in result.output


# --- mlx-lm --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_mlx_lm_loads_the_export_and_gives_our_logits(for_mlx_lm, bits):
    import mlx_lm
    from mlx_lm.utils import MODEL_REMAPPING

    out = for_mlx_lm.export(bits)
    config = json.loads((out / "config.json").read_text())
    assert config["ondevice_mlx"]["names"] == "mlx-lm" and config["ondevice_mlx"]["mlx_lm_compatible"]
    assert config.get("quantization") == ({"group_size": GROUP, "bits": bits} if bits else None)
    theirs, tokenizer = mlx_lm.load(str(out))
    model_type = config["model_type"]
    assert type(theirs).__module__ == f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}"
    from transformers import AutoTokenizer

    text = "the quick brown fox"  # the checkpoint's tokenizer came along
    assert tokenizer.encode(text) == AutoTokenizer.from_pretrained(for_mlx_lm.checkpoint).encode(text)
    ids = for_mlx_lm.ids(100, seed=1)
    got = np.array(theirs(mx.array([ids]))[0].astype(mx.float32))
    if bits is None:  # against our fp32 model straight from the Hugging Face checkpoint
        c = compare("logits", got, load(for_mlx_lm.ckpt).prefill(ids))
        assert c.within(FP32) and c.cosine >= 0.99999, c
    # against our own model on the same export (quantized: the same quantized weights), and against our model
    # quantized in memory from the checkpoint: what the mlx backend runs either way
    for ours in (load(load_mlx_checkpoint(out), dtype=None), load(for_mlx_lm.ckpt, quantize=bits, group_size=GROUP)):
        c = compare("logits", got, ours.prefill(ids))
        assert c.within(FP32), c  # both quantized or both not: rounding of op order only


@pytest.mark.parametrize("bits", [None, 8])
def test_mlx_lm_names_map_back_to_ours(for_mlx_lm, bits):
    """The export's weights are the model's own under mlx-lm's names (a tied head is not written), the names map
    back one to one, and what they map back to loads into the same parameters (a family whose model holds a value
    other than the canonical one, Gemma's norms `w` for `1 + w`, converts it both ways)."""
    cfg = for_mlx_lm.ckpt.config
    names = mlx_lm_of(cfg)
    stored = mx.load(str(for_mlx_lm.export(bits) / "model.safetensors"))
    params = dict(tree_flatten(load(for_mlx_lm.ckpt, quantize=bits, group_size=GROUP).model.parameters()))
    assert set(stored) == set(names.to_mlx_lm(params, cfg))
    assert ("lm_head.weight" in stored) != cfg.tie_word_embeddings
    back = names.from_mlx_lm(stored, cfg)
    assert set(back) == set(params)
    reloaded = dict(tree_flatten(load(load_mlx_checkpoint(for_mlx_lm.export(bits)), dtype=None).model.parameters()))
    for name, array in params.items():
        assert mx.array_equal(reloaded[name], array), name


# --- not a family's: outputs, bad options -------------------------------------------------------------------


def test_existing_output_is_refused_then_replaced_with_overwrite(gpt2_dir, tmp_path):
    """--overwrite replaces an earlier export, never a folder of the user's files (tests/test_overwrite.py)."""
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):  # with or without it: --overwrite would not replace it either
        assert_one_line_error(
            run_cli("convert", gpt2_dir, "--to", "mlx", "--out", out, *overwrite), "not written by ondevice"
        )
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert_one_line_error(run_cli("convert", gpt2_dir, "--to", "mlx", "--out", out), "already exists", "--overwrite")
    assert run_cli("convert", gpt2_dir, "--to", "mlx", "--out", out, "--overwrite").exit_code == 0  # an empty folder
    assert run_cli("convert", gpt2_dir, "--to", "mlx", "--out", out, "--overwrite").exit_code == 0  # an earlier export
    assert (out / "model.safetensors").is_file()


def test_a_failed_export_leaves_nothing(gpt2_dir, tmp_path, monkeypatch):
    def broken(path, *args, **kwargs):
        open(path, "wb").write(b"half")  # noqa: SIM115 - a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_mlx(gpt2_dir, tmp_path / "mlx", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dtype", "int8"], "--dtype int8"),
        (["--quantize", "3"], "--quantize 3"),
        (["--quantize", "4", "--group-size", "48"], "--group-size 48"),
    ],
)
def test_convert_bad_options(gpt2_dir, tmp_path, options, message):
    assert_one_line_error(run_cli("convert", gpt2_dir, "--to", "mlx", "--out", tmp_path / "o", *options), message)
    assert not (tmp_path / "o").exists()


def test_not_an_mlx_directory(gpt2_dir):
    from canonical.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not an MLX directory"):
        load_mlx_checkpoint(gpt2_dir)
