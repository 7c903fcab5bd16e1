"""What 4-bit Core ML compression does to a trained model's greedy decisions, measured and bounded.

Judged on the bundled keyboard model (a trained GPT-2) and its held-out text, not on the random test
checkpoints: random weights have no structure for 16 levels to capture, and random logits are
near-ties everywhere, so they say little about what compression does to a model a user ships.

Both runs read the reference's greedy tokens (teacher-forced, six held-out paragraphs, 32-token
prompts, 16 steps each). The requirement that compressed packages keep greedy agreement is NOT met
at 4 bits on this 5M-parameter model: rounded int4 changes 7 of 96 decisions, palettize4 11; no
rounding variant did better than 89/96 (blocks of 16, per-group tables of 4 or 8, symmetric or with a
zero point: convert/coreml_compress.py). int4 calibrated by GPTQ on the training text
(convert/coreml_calibrate.py) changes 4 (sensitive k-means palettization did not beat plain k-means).
The decisions 4-bit changes are ones the reference made by a small margin; this test pins the
measured agreement and the largest margin overturned, so that a regression shows, and states the bar
unmet rather than passing it."""

from __future__ import annotations

import pytest

from convert.checkpoint import load_checkpoint
from convert.coreml import CoreMLOptions, convert_to_coreml
from ondevice.backends.coreml import load_package
from ondevice.keyboard.predictor import _load_tokenizer
from ondevice.parity import compare, greedy_agreement
from ondevice.reference import load_reference

PROMPT, STEPS, PARAGRAPHS = 32, 16, 6
# scheme: (decisions kept of 96, largest reference margin a changed decision had, smallest logit
# cosine), as measured on the bundled model: int4 89/96, margins <= 0.17, 0.99949; int4 calibrated by
# GPTQ on the training text (convert/coreml_calibrate.py) 92/96, margins <= 0.11, 0.99978 (91-93
# over calibration seeds); palettize4 85/96, margins <= 0.46, 0.99909. Asserted with a little room
# for summation order (floors and ceilings).
MEASURED = {"int4": (89, 0.2, 0.9994), "int4-gptq": (91, 0.15, 0.9997), "palettize4": (85, 0.5, 0.999)}


@pytest.fixture(scope="module")
def keyboard():
    ckpt = load_checkpoint("keyboard-gpt2")
    tokenizer = _load_tokenizer(ckpt.directory)
    lines = [line for line in (ckpt.directory / "heldout.txt").read_text().splitlines() if len(line) > 400]
    prompts = [tokenizer.encode(line).ids[:PROMPT] for line in lines[:PARAGRAPHS]]
    return ckpt, load_reference(ckpt), prompts


@pytest.mark.parametrize("scheme", list(MEASURED))
def test_four_bit_package_against_the_trained_models_greedy_decisions(keyboard, scheme, tmp_path):
    ckpt, reference, prompts = keyboard
    compress, _, calibrated = scheme.partition("-")
    # Calibrated on the text the model was trained on, never on the held-out text measured here.
    calibration = ckpt.directory / "train.txt.gz" if calibrated else None
    options = CoreMLOptions(context=PROMPT + STEPS, seq_lens=(PROMPT,), compress=compress, calibration_text=calibration)
    package = convert_to_coreml(ckpt.directory, tmp_path / f"{scheme}.mlpackage", options, progress=False)
    ours = load_package(package)
    cosines, agreements = [], []
    for prompt in prompts:
        ours.trim(0)
        reference.trim(0)
        cosines.append(compare("logits", ours.prefill(prompt), reference.prefill(prompt)).cosine)
        agreements.append(greedy_agreement(ours, reference, prompt, STEPS))
    kept = sum(a.agreed for a in agreements)
    margins = [m for a in agreements for m in a.miss_margins]
    print(
        f"{scheme}: greedy {kept}/{len(prompts) * STEPS}, changed at margins {sorted(margins)}, "
        f"min cosine {min(cosines):.5f}"
    )
    floor, margin_ceiling, cosine_floor = MEASURED[scheme]
    assert kept >= floor, (scheme, kept)
    assert max(margins, default=0.0) <= margin_ceiling, (scheme, margins)
    assert min(cosines) >= cosine_floor, (scheme, cosines)
