"""Inputs for encoders and the comparison every encoder test makes: every output the reference has, real tokens
only for per-token outputs."""

from __future__ import annotations

import numpy as np

from ondevice.parity import compare


def encoder_inputs(cfg, batch: int, seq: int, seed: int = 0):
    """Random ids, the last row ending in padding, token types where the model has them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    if seq > 1:
        mask[-1, seq - max(1, seq // 3) :] = 0
    types = rng.integers(0, 2, size=(batch, seq)) if getattr(cfg, "type_vocab_size", 0) > 1 else None
    return ids, mask, types


def compare_encoders(ours, reference, ids, mask, types, tol) -> list:
    """Every output of the reference, real tokens only for per-token outputs; all within `tol`."""
    got, want = ours.encode(ids, mask, types), reference.encode(ids, mask, types)
    assert got.keys() == want.keys()
    valid = mask.astype(bool)
    results = []
    for name in want:
        a, b = (got[name][valid], want[name][valid]) if got[name].ndim == 3 else (got[name], want[name])
        results.append(compare(name, a, b))
    failed = [r for r in results if not r.within(tol)]
    assert not failed, failed
    return results
