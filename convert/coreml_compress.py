"""Weight compression of a converted model through `coremltools.optimize.coreml`.

The 4-bit schemes compress the transformer layers to 4 bits and keep the vocabulary tables (token and
position embeddings, the output head and its chunks) at 8-bit (int4) or a 6-bit table (palettize4):
every logit is one row of the head, so 4-bit error there lands on the logits undamped (the same trade
as llama.cpp's Q4_K_M keeping its output at 6 bits). int4 takes a zero point per block of 32: on the
trained keyboard model a symmetric scale kept fewer greedy decisions and smaller blocks no more (the figures of
each choice: docs/measurements.md).

Each scheme is deterministic (k-means palettization seeds scikit-learn's KMeans with 0), so the
prefill and decode functions of one package compress to identical constants and still share them. Their
weights are the same, so k-means clusters each weight group once (`KMeansOnce`) for all the functions: it is
the slow part of a palettized conversion (docs/measurements.md)."""

from __future__ import annotations

import hashlib

import numpy as np

COMPRESSIONS = ("none", "int8", "int4", "palettize4", "palettize6")


class KMeansOnce:
    """coremltools' own k-means look-up table (the one its `mode="kmeans"` runs: kmeans1d for large float16
    groups, else scikit-learn's KMeans seeded with 0), computed once per distinct weight group and bit width,
    as a `mode="custom"` `lut_function` for each function of a package. tests/test_coreml_compressed.py
    checks that it gives the constants `mode="kmeans"` gives."""

    def __init__(self) -> None:
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def lut_function(self, nbits: int):
        from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

        def lut_and_indices(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            key = (nbits, weight.dtype.str, weight.shape, hashlib.blake2b(np.ascontiguousarray(weight).data).digest())
            if key not in self._tables:
                lut, indices = _get_kmeans_lookup_table_and_weight(nbits, weight)
                self._tables[key] = (lut.astype(weight.dtype), indices.astype(np.uint8))
            return self._tables[key]

        return lut_and_indices


def compress_functions(functions: dict, scheme: str, target) -> dict:
    """Each function of a package (name -> model) compressed by `scheme`; k-means runs once for all of them."""
    kmeans = KMeansOnce()
    return {name: compress(model, scheme, target, kmeans) for name, model in functions.items()}


def lut_granularity(target) -> dict:
    """Palettization's look-up tables for `target`: iOS 18 allows one per group of 16 output channels (far less
    error than one per tensor); before it, one table per tensor is all constexpr_lut_to_dense takes."""
    import coremltools as ct

    return {"granularity": "per_grouped_channel", "group_size": 16} if target >= ct.target.iOS18 else {}


def compress(model, scheme: str, target, kmeans: KMeansOnce):
    """Return `model` with its weights compressed by `scheme` (one of COMPRESSIONS); `kmeans` shares palettization
    tables with the package's other functions."""
    from coremltools.optimize import coreml as cto

    if scheme == "none":
        return model
    per_channel_int8 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    if scheme == "int8":
        # Per output channel, symmetric: constexpr_blockwise_shift_scale on iOS 18,
        # constexpr_affine_dequantize before.
        return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=per_channel_int8))
    tables = vocabulary_tables(model)
    if scheme == "int4":
        # Scale and zero point per block of 32 input channels (iOS 18's constexpr_blockwise_shift_scale);
        # the tables at int8.
        op = cto.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block", block_size=32)
        config = cto.OptimizationConfig(global_config=op, op_name_configs=dict.fromkeys(tables, per_channel_int8))
        return cto.linear_quantize_weights(model, config)
    nbits = int(scheme.removeprefix("palettize"))
    granularity = lut_granularity(target)
    op = cto.OpPalettizerConfig(mode="custom", lut_function=kmeans.lut_function(nbits), **granularity)
    table_op = cto.OpPalettizerConfig(mode="custom", lut_function=kmeans.lut_function(max(nbits, 6)), **granularity)
    config = cto.OptimizationConfig(global_config=op, op_name_configs=dict.fromkeys(tables, table_op))
    return cto.palettize_weights(model, config)


# Substrings of the weight constants' names (from torch.export's parameter paths) of vocabulary tables.
_TABLE_NAMES = ("tok_embed", "pos_embed", "lm_head", "mlm_decoder")


def is_vocabulary_table(name: str) -> bool:
    """Whether a weight constant (or canonical weight, dotted) is a vocabulary table. A tied model's token
    embedding is its head's chunks, one constant named after `lm_head`."""
    name = name.replace(".", "_")
    return any(part in name for part in _TABLE_NAMES)


WEIGHT_THRESHOLD = 2048  # coremltools compresses constants of more elements than this (its default)


def vocabulary_tables(model) -> list[str]:
    """Names of the embedding and vocabulary-head weight constants of a converted model, read from the MIL program
    it holds (ct.convert's models do). coremltools' `get_weights_metadata` gives the same names but rebuilds the
    program from the saved spec and computes every weight's sparsity and unique values first: seconds per large
    constant, for every function of every part (docs/measurements.md)."""
    program = getattr(model, "_mil_program", None)
    if program is None:  # a model loaded from disk
        from coremltools.optimize import coreml as cto

        return [name for name in cto.get_weights_metadata(model, WEIGHT_THRESHOLD) if is_vocabulary_table(name)]
    names: dict[str, None] = {}
    for function in program.functions.values():
        for op in function.find_ops(op_type="const"):
            if is_vocabulary_table(op.name) and np.size(op.val.val) > WEIGHT_THRESHOLD:
                names[op.name] = None
    return list(names)
