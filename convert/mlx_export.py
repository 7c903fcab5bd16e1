"""`ondevice convert --to mlx`: write a checkpoint as an MLX directory (format in `mlx_checkpoint.py`).

The weights are built and quantized by the very model code that runs them (`mlx_model/`), so what
is written is exactly what the mlx backend would have run from the Hugging Face checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from rich.progress import Progress

from canonical.config import config_to_dict
from canonical.errors import ConversionError
from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint, load_checkpoint
from convert.mlx_checkpoint import FORMAT_KEY, FORMAT_VERSION, WEIGHTS_FILE, MLXCheckpoint
from convert.registry import build_mlx_model, mlx_lm_of
from mlx_model.layers import DTYPES

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)  # what MLX's affine quantization accepts
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",  # transformers 5 writes the chat template beside tokenizer_config.json
    "chat_template.json",
    "generation_config.json",  # end-of-sequence ids and sampling defaults (mlx-lm reads its eos ids too)
    # sentence-transformers: the module list, and its own settings (the modules' folders follow modules.json)
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


def mlx_lm_compatible(config) -> bool:
    """Whether `mlx_lm.load` runs an export of this config with our logits (the family's mlx-lm entry says)."""
    mlx_lm = mlx_lm_of(config)
    return mlx_lm is not None and mlx_lm.compatible(config)


def export_mlx(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    dtype: str = "fp16",
    quantize: int | None = None,
    group_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `checkpoint` as MLX weights in `dtype`, optionally quantized to `quantize` bits; return `out`."""
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype} is not available for MLX (choose from {', '.join(DTYPES)})")
    if quantize is not None and quantize not in BITS:
        raise ConversionError(f"--quantize {quantize} is not supported (choose 4 or 8)")
    if quantize is not None and group_size not in GROUP_SIZES:
        raise ConversionError(f"--group-size {group_size} is not supported (choose 32, 64 or 128)")
    out = Path(out)
    with atomic_output(out, overwrite=overwrite) as work, Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"converting to MLX {dtype}" + (f" q{quantize}" if quantize else ""), total=4)
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        bar.advance(task)
        model = build_mlx_model(ckpt.config, ckpt.weights, DTYPES[dtype], quantize, group_size)
        weights = dict(tree_flatten(model.parameters()))
        mlx_lm = mlx_lm_of(ckpt.config)
        if mlx_lm is not None:
            weights = mlx_lm.to_mlx_lm(weights, ckpt.config)
        bar.advance(task)
        work.mkdir()
        try:
            mx.save_safetensors(str(work / WEIGHTS_FILE), weights, metadata={"format": "mlx"})
        except RuntimeError as exc:  # MLX reports a failed write (a full disk) as "[write] Unable to write N bytes"
            raise ConversionError(
                f"{out.name}/{WEIGHTS_FILE}: could not be written ({str(exc).splitlines()[0]}; is the disk full?)"
            ) from None
        bar.advance(task)
        _write_config(ckpt, work, dtype, quantize, group_size, names="canonical" if mlx_lm is None else "mlx-lm")
        _copy_tokenizer(ckpt.directory, work)
        bar.advance(task)
    return out


def _write_config(
    ckpt: Checkpoint | MLXCheckpoint, work: Path, dtype: str, bits: int | None, group_size: int, names: str
) -> None:
    config = json.loads((ckpt.directory / "config.json").read_text())
    mlx_lm = mlx_lm_of(ckpt.config)
    if mlx_lm is not None:
        config = mlx_lm.config(ckpt.config, config)
    # mlx-lm's key, set after the family's config (which drops a source's own quantization keys)
    quantization = {"group_size": group_size, "bits": bits} if bits else None
    if quantization:
        config["quantization"] = quantization
    else:
        config.pop("quantization", None)
    config[FORMAT_KEY] = {
        "version": FORMAT_VERSION,
        "family": ckpt.config.family,
        "config": config_to_dict(ckpt.config),
        "dtype": dtype,
        "quantization": quantization,
        "names": names,
        "mlx_lm_compatible": mlx_lm_compatible(ckpt.config),
    }
    (work / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _copy_tokenizer(source: Path, work: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, work / name)
    modules = source / "modules.json"
    if modules.is_file():  # sentence-transformers: the Pooling / Normalize folders it names
        for module in json.loads(modules.read_text()):
            folder = module.get("path", "")
            if folder and (source / folder).is_dir():
                shutil.copytree(source / folder, work / folder)
