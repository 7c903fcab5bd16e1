"""A family added through the registry alone (the toy family of tests/toy_family.py: GPT-2's architecture under an
unknown model_type, an ANE-layout model and nothing else) is served or refused in one line by every command, and the
shared runners cover it with no test file of its own. Nothing outside the tests is edited to add it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from canonical.gpt2 import GPT2Config
from convert.checkpoint import load_checkpoint
from convert.registry import FAMILIES, family_for_model_type, register, unregister
from ondevice.cli import app
from tests.toy_family import TOY, ToyConfig


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    register(TOY)  # ours only: transformers does not know the toy's model_type here
    try:
        yield TOY.make_random_checkpoint(tmp_path_factory.mktemp("toy") / "ckpt")
    finally:
        unregister("toy")


def _served_or_refused(*args: str) -> tuple[int, str]:
    """Run a command; it must exit 0 (served) or 2 with one line on stderr (refused), never a traceback."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        return 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return 2, lines[0]


def test_the_registry_reads_the_toy_family(toy):
    ckpt = load_checkpoint(toy)
    assert isinstance(ckpt.config, ToyConfig) and ckpt.model_type == "toy_gpt2"
    assert family_for_model_type("toy_gpt2", "config.json") is FAMILIES["toy"]


def test_every_command_serves_or_refuses_the_toy_family(toy, tmp_path):
    # Generation on the torch-ane backend: the ANE-layout model is all it needs.
    code, out = _served_or_refused(
        "generate", str(toy), "--ids", "3 1 4 1 5", "--backend", "torch-ane", "--max-tokens", "6", "--ignore-eos"
    )
    assert code == 0 and len(out.split()) == 6
    # The same tokens as GPT-2's own model class on the same weights: nothing took a GPT-2-only path.
    gpt2 = load_checkpoint(toy)
    from ondevice.backends.torch_ane import TorchCausalLM
    from ondevice.runtime import greedy_tokens

    expected = greedy_tokens(
        TorchCausalLM(GPT2Config(**dataclasses.asdict(gpt2.config)), gpt2.weights), [3, 1, 4, 1, 5], 6
    )
    assert [int(t) for t in out.split()] == expected
    # MLX: the toy has no MLX model, so every MLX path refuses in one line naming what is missing.
    for args in (
        ("generate", str(toy), "--ids", "3 1", "--backend", "mlx"),
        ("convert", str(toy), "--to", "mlx", "--out", str(tmp_path / "mlx")),
        ("verify", str(toy), "--backend", "mlx"),
    ):
        code, line = _served_or_refused(*args)
        assert code == 2 and "toy family has no mlx model" in line, line
    assert not (tmp_path / "mlx").exists()
    # The reference is transformers, which does not know the toy's model_type: refused, in one line.
    code, line = _served_or_refused("verify", str(toy))
    assert code == 2 and "transformers cannot load the reference model" in line
    # Predictive text needs a tokenizer, which the toy checkpoint lacks.
    code, line = _served_or_refused("predict", "hello ", "--model", str(toy))
    assert code == 2 and "no tokenizer files" in line
    # Core ML: converted through the generic causal-LM export, inspected, and run by the package runtime.
    package = tmp_path / "toy.mlpackage"
    code, _ = _served_or_refused(
        "convert", str(toy), "--to", "coreml", "--out", str(package), "--context", "32", "--seq-len", "8"
    )
    assert code == 0 and package.is_dir()
    code, out = _served_or_refused("inspect", str(package))
    assert code == 0 and "toy_gpt2" in out
    from ondevice.backends.coreml import load_package

    lm = load_package(package)
    assert isinstance(lm.config, ToyConfig)
    ours = lm.prefill([3, 1, 4, 1, 5])[-1]
    reference = TorchCausalLM(gpt2.config, gpt2.weights).prefill([3, 1, 4, 1, 5])[-1]
    cosine = float(ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference))
    assert cosine >= 0.999  # the fp16 bound of ondevice/parity.py


def test_an_unregistered_model_type_is_refused_by_every_command(toy, tmp_path):
    unregister("toy")
    try:
        for args in (
            ("verify", str(toy)),
            ("generate", str(toy), "--ids", "1 2"),
            ("predict", "x ", "--model", str(toy)),
            ("convert", str(toy), "--to", "coreml", "--out", str(tmp_path / "t.mlpackage")),
            ("convert", str(toy), "--to", "mlx", "--out", str(tmp_path / "t")),
        ):
            code, line = _served_or_refused(*args)
            assert code == 2 and "model_type 'toy_gpt2' is not supported (supported: gpt2, bert" in line, line
    finally:
        register(TOY)


def test_the_shared_runners_cover_a_family_added_to_the_registry(tmp_path):
    """With the toy registered (and its model_type taught to transformers, so that the reference loads it), the
    shared runners list it and hold it to the contract: torch-ane parity, its Core ML package, predictive text on
    each tokenizer style; the MLX runners leave it out, as it has no MLX model. Run in a fresh pytest, as a
    contributor's family would be: no test file of its own."""
    runners = ["tests/test_parity_torch_ane.py", "tests/test_coreml_packages.py", "tests/test_parity_mlx.py",
               "tests/test_mlx_export.py", "tests/test_keyboard_families.py"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ONDEVICE_TEST_REGISTER="tests.toy_family:register_toy")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    pytest = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]
    listed = subprocess.run([*pytest, "--collect-only", *runners], cwd=root, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stdout[-2000:]
    toy = [line for line in listed.stdout.splitlines() if "toy" in line]
    assert any(line.startswith("tests/test_parity_torch_ane.py") for line in toy), toy
    assert any("toy-default" in line for line in toy)  # its Core ML package
    assert any(line.startswith("tests/test_keyboard_families.py") for line in toy)
    assert not any(line.startswith(("tests/test_parity_mlx.py", "tests/test_mlx_export.py")) for line in toy)
    ran = subprocess.run(
        [*pytest, "-k", "toy", "--basetemp", str(tmp_path / "run"), *runners[:2], runners[4]],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stdout[-3000:]
    counts = ran.stdout.strip().splitlines()[-1]
    assert " passed" in counts and "failed" not in counts and "error" not in counts, counts
