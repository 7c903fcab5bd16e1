"""Calibrate an ANE-layout causal LM (GPT-2, the Llama family) on a text file before export: GPTQ for the
int4 scheme.

Why: round-to-nearest int4 (`coreml_compress.py`) rounds every weight on its own, so the errors of one
output channel add up in whatever direction they fall. GPTQ rounds a layer's input channels one at a
time and moves each rounding error onto the channels not yet rounded, weighted by the inverse of the
Hessian of that layer's outputs on real text; it then feeds the quantized layer's outputs to the next
one. Same grid, same size (uint4 with a scale and zero point per block of 32 input channels), better
weights: on the bundled keyboard model it keeps more of the reference's greedy decisions than rounding
does (the figures, and how they were measured: docs/measurements.md).

How the result reaches Core ML: coremltools' GPTQ leaves each quantized conv with on-grid weights and
its compression metadata (buffers named `_COREML_/weight/...`); `ct.convert` reads them from the
exported program's state dict and writes `constexpr_blockwise_shift_scale` ops with uint4 data on
exactly that grid. The int4 scheme's pass afterwards rewrites only plain `const` weights, so it finds
the blocks already compressed and quantizes just the vocabulary tables (to int8), as without
calibration.

Calibrate on the model's training text (or text like it), never on the text it is evaluated on."""

from __future__ import annotations

import gzip
import logging
from contextlib import suppress
from pathlib import Path

import torch
from torch import nn

from ane_model.causal_lm import CausalLM
from ane_model.layers import causal_mask
from canonical.errors import ConversionError

CALIBRATION_WINDOWS = 128
MAX_WINDOW = 512  # tokens per window at most: a Qwen3's 40,960 positions would make each window a book
BLOCK_SIZE = 32  # input channels per scale and zero point, as the uncalibrated int4 scheme uses


def read_calibration_text(text: Path) -> list[str]:
    """The paragraphs (non-empty lines) of a calibration text, plain or .gz; ConversionError naming the file when
    it is missing, not UTF-8 text, or empty."""
    text = Path(text)
    if not text.is_file():
        raise ConversionError(f"{text}: calibration text not found")
    opener = gzip.open if text.suffix == ".gz" else open
    try:
        with opener(text, "rt", encoding="utf-8") as f:
            paragraphs = [line for line in f.read().splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ConversionError(
            f"{text}: calibration text is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}): give the model's training text, one paragraph a line"
        ) from None
    except (OSError, EOFError) as exc:  # gzip's errors for a damaged or mislabelled .gz file
        raise ConversionError(f"{text}: calibration text cannot be read ({exc})") from None
    if not paragraphs:
        raise ConversionError(f"{text}: calibration text is empty (one paragraph a line is expected)")
    return paragraphs


def calibration_windows(
    text: Path, tokenizer_dir: Path, length: int, count: int | None = None, seed: int = 0, vocab_size: int | None = None
) -> list[torch.Tensor]:
    """`count` token windows (1, length) at seeded random offsets in `text` (one paragraph a line,
    plain or .gz), each paragraph preceded by the end-of-text token as the model reads text at inference."""
    from transformers import AutoTokenizer

    from canonical.config import check_tokenizer_fits

    text = Path(text)
    paragraphs = read_calibration_text(text)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise ConversionError(
            f"{tokenizer_dir}: its tokenizer cannot be loaded for calibration ({str(exc).splitlines()[0]})"
        ) from None
    if vocab_size is not None:
        check_tokenizer_fits(len(tokenizer), vocab_size, tokenizer_dir)
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = [token for ids in tokenizer(paragraphs)["input_ids"] for token in separator + ids]
    if len(ids) <= length:
        raise ConversionError(f"{text}: {len(ids)} tokens, too few for one {length}-token calibration window")
    stream = torch.tensor(ids)
    count = CALIBRATION_WINDOWS if count is None else count
    starts = torch.randint(0, len(stream) - length, (count,), generator=torch.Generator().manual_seed(seed))
    return [stream[start : start + length][None] for start in starts.tolist()]


def window_length(config) -> int:
    """Tokens per calibration window: the model's context, up to MAX_WINDOW."""
    return min(config.max_positions, MAX_WINDOW)


def calibrate_int4(model: CausalLM, windows: list[torch.Tensor], block_size: int = BLOCK_SIZE) -> CausalLM:
    """Quantize the transformer blocks' 1x1 convs of `model` in place with GPTQ (uint4, one scale and
    zero point per `block_size` input channels) and register the metadata `ct.convert` honours.

    Embeddings and the output head are left alone: the int4 scheme keeps them at int8 after conversion."""
    from coremltools.optimize.torch.layerwise_compression import (
        LayerwiseCompressor,
        LayerwiseCompressorConfig,
        ModuleGPTQConfig,
    )

    logging.getLogger("coremltools.optimize.torch").setLevel(logging.WARNING)  # one line per layer otherwise
    # coremltools' GPTQ defaults otherwise (dampening 0.01, columns in order): activation order,
    # symmetric scales and 32-column processing groups measured no better on held-out training text,
    # and on the 96 greedy decisions blocks of 16 kept 93, activation order 93, both together 91: the
    # spread of calibration seeds (91-93), every change at a reference margin under 0.06 logits.
    layer_config = ModuleGPTQConfig(
        weight_dtype="uint4", granularity="per_block", block_size=block_size, quantization_scheme="affine"
    )
    config = LayerwiseCompressorConfig(global_config=layer_config, calibration_nsamples=len(windows))
    # LayerwiseCompressor runs a sequence of layers that each take the previous output alone.
    stages = nn.Sequential(*(_Stage(block, model.layer_inputs, model.mask_inputs) for block in model.layers))
    with torch.no_grad():
        LayerwiseCompressor(stages, config).compress(_block_inputs(model, windows), device="cpu", inplace=True)
    return model.eval()


class _Stage(nn.Module):
    """A block as a one-input layer: no cache, the causal mask made from the input's length, and whatever else
    the family's blocks take for positions 0 .. S-1 (`layer_inputs`: RoPE tables for the Llama family;
    `mask_inputs`: Gemma 3's sliding-window mask)."""

    def __init__(self, block: nn.Module, layer_inputs, mask_inputs):
        super().__init__()
        self.block = block
        # bound methods of the model, not a submodule (GPTQ must not see it)
        self.layer_inputs, self.mask_inputs = layer_inputs, mask_inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, S)
        seq = x.shape[-1]
        extras = self.layer_inputs(seq, 0, x.dtype) + self.mask_inputs(seq, seq, 0, x.dtype)
        return self.block(x, causal_mask(seq, seq, 0, x.dtype), None, 0, *extras)


class _Stop(Exception):
    pass


def _block_inputs(model: CausalLM, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """The first block's inputs (embedded tokens, (1, C, 1, S)), taken by the model's own forward pass."""
    captured: list[torch.Tensor] = []

    def take(module, args):
        captured.append(args[0].detach())
        raise _Stop  # nothing after the embeddings is needed

    handle = model.layers[0].register_forward_pre_hook(take)
    try:
        with torch.no_grad():
            for ids in windows:
                with suppress(_Stop):
                    model.hidden_states(ids)
    finally:
        handle.remove()
    return captured
