"""Write a causal LM as a chunked Core ML model: a folder of packages, each small enough for what an iPhone app can
load (~1 GB), chained by a manifest (format and why the state is per part: `coreml_runtime/chunked.py`).

The decoder's blocks are split into parts of consecutive layers, as even as the count allows; the token table and
the head share one package of their own (a tied table is one constant: stored once in the whole model). Each part
is converted, compressed and written, and its converted programs dropped, before the next one starts. Every
function has fixed shapes (rule 7) and the same prefill length as a single package's `prefill`."""

from __future__ import annotations

import gc
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ane_model.causal_lm import CausalLM
from canonical.errors import ConversionError
from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint, load_checkpoint
from convert.coreml import (
    IOS_WEIGHT_LIMIT,
    CoreMLOptions,
    Plan,
    bytes_per_weight,
    convert_function,
    merge_saved_functions,
    package_interface,
    plan_conversion,
    save_package,
    stored_parameters,
)
from convert.coreml_compress import KMeansOnce, compress
from convert.coreml_fast import faster_conversion
from convert.coreml_modules import BlocksWithState, EmbedForExport, HeadForExport
from convert.coreml_package import plan_metadata, source_weights_sha256, write_metadata
from convert.registry import build_ane_model, unloaded_ane_model
from coreml_runtime.chunked import EMBED_HEAD, FORMAT, FORMAT_VERSION, LAYERS, MANIFEST, TOKENIZER_FOLDER
from coreml_runtime.interface import HIDDEN_IN, HIDDEN_OUT, INPUT_IDS, LOGITS, POSITION, logits_names
from coreml_runtime.package import FORMAT_VERSION as PACKAGE_FORMAT_VERSION
from coreml_runtime.package import TOKENIZER_FILES, sha256_file, weights_path

PART_LIMIT = 950_000_000  # bytes of weights per part when chunking for iOS: under IOS_WEIGHT_LIMIT, with room
# Parameters per part of layers at most, unless --chunks says otherwise: converting a part holds it in fp32 beside
# its converted functions (peak RSS 5-7x the largest fp16 part's bytes, docs/measurements.md), so this bounds a
# conversion's memory at a few GB whatever the model's size (an int4 part under 950 MB would hold ~1.7B parameters)
PART_PARAMETERS = 500_000_000


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def split_layers(num_layers: int, parts: int) -> list[range]:
    """`parts` runs of consecutive layers, as even as the count allows (the longer ones first)."""
    if not 1 <= parts <= num_layers:
        raise ConversionError(f"--chunks {parts}: the model has {num_layers} layers (choose 1..{num_layers})")
    size, extra = divmod(num_layers, parts)
    starts = [i * size + min(i, extra) for i in range(parts + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(parts)]


def part_bytes(config, weights: dict[str, torch.Tensor], options: CoreMLOptions) -> tuple[int, int]:
    """About how many weight bytes (the embed/head part, one layer) a part stores under `options`."""
    tables, other = stored_parameters(config, weights)
    per_table, per_other = bytes_per_weight(options.dtype, options.compress)
    return int(tables * per_table), int(other * per_other / config.num_layers)


def chunk_count(config, weights: dict[str, torch.Tensor], options: CoreMLOptions, chunks: int | None,
                chunk_size: int | None) -> int:  # fmt: skip
    """How many parts of layers: `chunks` as asked, or as few as keep each part under `chunk_size` bytes (by default
    PART_LIMIT for an iOS target, no limit otherwise) and under PART_PARAMETERS parameters."""
    if chunks is not None:
        return len(split_layers(config.num_layers, chunks))
    ios = options.target.lower().startswith("ios")
    limit = chunk_size or (PART_LIMIT if ios and not options.allow_large else None)
    table, layer = part_bytes(config, weights, options)
    # Conversion memory: a part is held in fp32 beside its converted functions, ~8-10 bytes a parameter
    per_layer = stored_parameters(config, weights)[1] / config.num_layers
    by_memory = math.ceil(config.num_layers / max(1, PART_PARAMETERS // max(int(per_layer), 1)))
    if limit is None:
        return by_memory
    if ios and not options.allow_large and table > IOS_WEIGHT_LIMIT:
        raise ConversionError(
            f"the token table and head alone come to about {_mb(table)}, above the ~1 GB an iOS app can load "
            "in one part: compress them (--compress int8, int4 or palettize4)"
        )
    per_part = max(1, limit // max(layer, 1))
    if layer > limit:
        raise ConversionError(f"one layer comes to about {_mb(layer)}, above the chunk size of {_mb(limit)}")
    return max(math.ceil(config.num_layers / per_part), by_memory)


def convert_chunked(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    options: CoreMLOptions,
    chunks: int | None = None,
    chunk_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Convert a causal LM into the chunked model `out` (a folder); return `out`. `say` hears one line naming the
    parts before the slow work starts."""
    out = Path(out)
    if out.suffix == ".mlpackage":
        raise ConversionError(f"{out}: a chunked model is a folder of packages; name it without .mlpackage")
    if out.exists() and not overwrite:
        raise ConversionError(f"{out}: already exists (pass --overwrite to replace it)")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if not isinstance(ckpt, Checkpoint):
        raise ConversionError(f"{ckpt.directory}: an MLX directory; convert from the checkpoint it came from")
    config = ckpt.config
    if not config.is_causal:
        raise ConversionError(f"{ckpt.model_type} is an encoder: chunked models are for causal LMs (one package fits)")
    plan = plan_conversion(config, options)
    if plan.kv_cache != "state":
        raise ConversionError(
            f"a chunked model keeps each part's KV cache as Core ML state, which needs iOS18/macOS15 and --kv-cache "
            f"state (target {options.target}, cache {plan.kv_cache})"
        )
    ranges = split_layers(config.num_layers, chunk_count(config, ckpt.weights, options, chunks, chunk_size))
    table, layer = part_bytes(config, ckpt.weights, options)
    if say is not None:
        sizes = ", ".join(str(len(r)) for r in ranges)
        say(
            f"chunked: the token table + head (about {_mb(table)}) and {len(ranges)} part{'s' * (len(ranges) > 1)} "
            f"of layers ({sizes} layers; about {_mb(layer * len(ranges[0]))} at most)"
        )
    bar = tqdm(total=len(ranges) + 2, desc="coreml", unit="part", disable=not progress)
    try:
        with atomic_output(out, overwrite=overwrite) as work:
            work.mkdir()
            _write_parts(ckpt, plan, ranges, work, bar)
    finally:
        bar.close()
    return out


def _write_parts(ckpt: Checkpoint, plan: Plan, ranges: list[range], work: Path, bar) -> None:
    import coremltools as ct

    calibrate = plan.options.calibration_text is not None
    # Bounded memory: the model is built without its weights, and each part loads its own, converts, and gives them
    # back. GPTQ runs the whole model over its calibration text, so with it every weight is loaded up front.
    model = build_ane_model(ckpt.config, ckpt.weights) if calibrate else unloaded_ane_model(ckpt.config)
    if not isinstance(model, CausalLM):
        raise ConversionError(f"{ckpt.model_type}: its ANE model is not a CausalLM, which chunking splits")
    if calibrate:
        from convert.coreml_calibrate import calibrate_int4, calibration_windows, window_length

        bar.set_postfix_str("calibrate")
        assert plan.options.calibration_text is not None
        windows = calibration_windows(
            plan.options.calibration_text, ckpt.directory, window_length(ckpt.config), vocab_size=ckpt.config.vocab_size
        )
        calibrate_int4(model, windows)
    assert plan.context is not None  # a causal LM's plan
    model.limit_positions(plan.context)
    prefill, hidden_size = plan.seq_lens[0], ckpt.config.hidden_size
    dtype = np.float16 if plan.options.dtype == "fp16" else np.float32
    position = ct.TensorType(POSITION, shape=(1,), dtype=np.int32)
    logits = logits_names(LOGITS, len(model.lm_head.chunks))
    model_id = uuid.uuid4().hex
    lengths = {"prefill": prefill, "decode": 1}

    def ids(seq: int) -> list:
        return [ct.TensorType(INPUT_IDS, shape=(1, seq), dtype=np.int32), position]

    def hidden(seq: int) -> ct.TensorType:
        return ct.TensorType(HIDDEN_IN, shape=(1, hidden_size, 1, seq), dtype=dtype)

    def examples(seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = torch.zeros(1, dtype=torch.long)
        return torch.zeros(1, seq, dtype=torch.long), positions, torch.zeros(1, hidden_size, 1, seq)

    parts: list[dict] = []
    outside = tuple(name for name in model.EMBED_AND_HEAD if getattr(model, name, None) is not None)
    tables = model.part_view(None)
    embed, head = EmbedForExport(tables), HeadForExport(tables)
    with faster_conversion() as fast, tempfile.TemporaryDirectory(dir=work.parent) as scratch:
        programs = fast and plan.options.compress == "none"

        def write(name: str, role: str, blocks: range, convert: Mapping[str, Callable[[], object]],
                  modules: tuple[str, ...]) -> None:  # fmt: skip
            """Load the part's weights, convert its functions, give the weights back (the functions hold their own
            constants by then), compress and save."""
            bar.set_postfix_str(name)
            path = work / f"{name}.mlpackage"
            if not calibrate:  # else all loaded already
                model.load_part(ckpt.weights, modules)
            try:
                if programs:  # uncompressed programs, merged in memory (convert/coreml_fast.py)
                    functions = {fn: make() for fn, make in convert.items()}
                else:
                    saved = _functions_to_disk(convert, plan, Path(scratch) / name)
            finally:
                if not calibrate:
                    model.release_part(modules)
                    gc.collect()
            if programs:
                save_package(functions, path, Path(scratch), plan.target, fast)
                del functions
            else:
                merge_saved_functions(saved, path)
            interface = package_interface(path)
            write_metadata(path, ckpt, {
                "format_version": PACKAGE_FORMAT_VERSION,
                "architecture": ckpt.model_type,
                "model_id": model_id,
                "part_index": str(len(parts)),
                "part_role": role,
                "layers": f"{blocks.start},{blocks.stop}",
                "weights_sha256": sha256_file(weights_path(path)),
                **plan_metadata(plan),
                "functions": ",".join(convert),
                "interface": json.dumps(interface),
            }, f"part {len(parts)} of a chunked {ckpt.model_type}")  # fmt: skip
            parts.append({
                "file": path.name,
                "role": role,
                "layers": [blocks.start, blocks.stop],
                "functions": interface,
                "weights_sha256": sha256_file(weights_path(path)),
                "weight_bytes": weights_path(path).stat().st_size,
            })  # fmt: skip
            bar.update()

        def embed_function(seq: int):
            input_ids, pos, _ = examples(seq)
            return convert_function(embed, (input_ids, pos), ids(seq), [HIDDEN_OUT], plan, programs)

        def head_function(seq: int):
            return convert_function(head, examples(seq)[2:], [hidden(seq)], logits, plan, programs)

        def blocks_function(module: BlocksWithState, seq: int):
            _, pos, states = examples(seq)
            return convert_function(module, (states, pos), [hidden(seq), position], [HIDDEN_OUT], plan, programs)

        first = {f"{kind}_{step}": partial(make, seq) for kind, make in (("embed", embed_function),
                 ("head", head_function)) for step, seq in lengths.items()}  # fmt: skip
        write(EMBED_HEAD, EMBED_HEAD, range(0), first, outside)
        for k, blocks in enumerate(ranges):
            view = model.part_view(blocks)
            module = BlocksWithState(view, range(len(view.layers)), plan.context)
            functions = {step: partial(blocks_function, module, seq) for step, seq in lengths.items()}
            write(f"{LAYERS}_{k}", LAYERS, blocks, functions, tuple(f"layers.{i}" for i in blocks))
    _write_manifest(ckpt, plan, model_id, parts, work)
    bar.update()


def _functions_to_disk(convert: Mapping[str, Callable[[], object]], plan: Plan, scratch: Path) -> dict[str, Path]:
    """Each function converted, compressed and saved under `scratch` before the next one is converted (name -> path):
    one function's program in memory at a time, where holding all four of the embed/head part's (a 3B model's table is
    394M parameters, each function's program its own copy until they are merged) took GBs more."""
    kmeans = KMeansOnce()  # palettization tables shared by the functions, as compress_functions shares them
    scratch.mkdir()
    saved = {}
    for name, make in convert.items():
        converted = compress(make(), plan.options.compress, plan.target, kmeans)
        saved[name] = scratch / f"{name}.mlpackage"
        converted.save(str(saved[name]))
        del converted
        gc.collect()
    return saved


def _write_manifest(ckpt: Checkpoint, plan: Plan, model_id: str, parts: list[dict], work: Path) -> None:
    """The manifest, the tokenizer files and the source config beside the parts."""
    from canonical.config import config_to_json

    tokenizer = [name for name in TOKENIZER_FILES if (ckpt.directory / name).is_file()]
    (work / TOKENIZER_FOLDER).mkdir()
    for name in tokenizer:
        shutil.copyfile(ckpt.directory / name, work / TOKENIZER_FOLDER / name)
    shutil.copyfile(ckpt.directory / "config.json", work / "config.json")
    layer_parts = [i for i, p in enumerate(parts) if p["role"] == LAYERS]

    def chain(step: str) -> list[dict]:
        return (
            [{"part": 0, "function": f"embed_{step}"}]
            + [{"part": i, "function": step} for i in layer_parts]
            + [{"part": 0, "function": f"head_{step}"}]
        )

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "model": {
            "architecture": ckpt.model_type,
            "config": config_to_json(ckpt.config),
            **plan_metadata(plan),
            "functions": "prefill,decode",
            "source_checkpoint": str(ckpt.directory),
            "source_weights_sha256": source_weights_sha256(ckpt.directory),
            "tokenizer_files": [f"{TOKENIZER_FOLDER}/{name}" for name in tokenizer],
        },
        "how_to_run": (
            "one step of prefill (or decode) runs chain.prefill (chain.decode) in order, every function with the same "
            f"'{POSITION}' (the slot of the step's first token); '{INPUT_IDS}' enters the first function, each "
            f"function's '{HIDDEN_OUT}' is the next one's '{HIDDEN_IN}', the last gives the logits chunks in "
            "vocabulary order; each part of layers keeps its own KV cache as state (one MLState per part)"
        ),
        "chain": {"prefill": chain("prefill"), "decode": chain("decode")},
        "parts": parts,
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
