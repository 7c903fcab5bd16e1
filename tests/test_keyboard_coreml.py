"""Predictive text on a converted Core ML package: Core ML itself on a Mac, the numpy evaluator of the
package's ML program here. Same engine, same suggestions as the torch model it was converted from."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from convert.coreml import CoreMLOptions, convert_to_coreml
from ondevice.cli import app
from ondevice.keyboard import Predictor
from tests.cli import assert_one_line_error
from tests.keyboard_fixtures import make_keyboard_checkpoint


@pytest.fixture(scope="module")
def keyboard_package(tmp_path_factory):
    directory = make_keyboard_checkpoint(tmp_path_factory.mktemp("keyboard"))
    package = tmp_path_factory.mktemp("pkg") / "keyboard.mlpackage"
    convert_to_coreml(str(directory), package, CoreMLOptions(dtype="fp16", seq_lens=(16,), context=64))
    return directory, package


def test_suggestions_from_the_package_match_the_torch_model(keyboard_package):
    directory, package = keyboard_package
    on_package = Predictor(package, backend="coreml", max_word_tokens=2)
    on_torch = Predictor(directory, max_word_tokens=2)
    for text in ("The quick brown ", "A keyboard sug", "They thought the th"):
        got, want = on_package.suggest(text), on_torch.suggest(text)
        assert [s.word for s in got][:1] == [s.word for s in want][:1], text
        # fp16 package against the fp32 torch model: word probabilities agree to fp16 precision.
        common = {s.word: s.probability for s in want}
        for s in got:
            if s.word in common:
                np.testing.assert_allclose(s.probability, common[s.word], rtol=2e-2)


def test_predict_cli_on_a_package_and_bad_input(keyboard_package, tmp_path):
    directory, package = keyboard_package
    result = CliRunner().invoke(app, ["predict", "The quick brown ", "--model", str(package), "--backend", "coreml"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    # A checkpoint directory given to the coreml backend: one line naming it and what the backend wants (the CLI
    # checks a directory's package files before the Predictor would say "runs a converted package").
    line = assert_one_line_error(
        CliRunner().invoke(app, ["predict", "hi", "--model", str(directory), "--backend", "coreml"]), str(directory)
    )
    assert "converted package" in line or "Core ML package" in line, line
