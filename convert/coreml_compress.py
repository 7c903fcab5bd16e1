"""Weight compression of a converted model through `coremltools.optimize.coreml`.

Each scheme is deterministic (k-means palettization seeds scikit-learn's KMeans with 0), so the
prefill and decode functions of one package compress to identical constants and still share them."""

from __future__ import annotations

COMPRESSIONS = ("none", "int8", "int4", "palettize4", "palettize6")


def compress(model, scheme: str, target):
    """Return `model` with its weights compressed by `scheme` (one of COMPRESSIONS)."""
    import coremltools as ct
    from coremltools.optimize import coreml as cto

    if scheme == "none":
        return model
    ios18 = target >= ct.target.iOS18
    if scheme == "int8":
        # Per output channel, symmetric: constexpr_blockwise_shift_scale on iOS 18,
        # constexpr_affine_dequantize before.
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op))
    if scheme == "int4":
        # Per block of 32 input channels (iOS 18's constexpr_blockwise_shift_scale).
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=32)
        return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op))
    nbits = int(scheme.removeprefix("palettize"))
    # iOS 18 allows one look-up table per group of 16 output channels (far less error than one per
    # tensor); before it, one table per tensor is all constexpr_lut_to_dense takes.
    granularity = {"granularity": "per_grouped_channel", "group_size": 16} if ios18 else {}
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, **granularity)
    return cto.palettize_weights(model, cto.OptimizationConfig(global_config=op))
