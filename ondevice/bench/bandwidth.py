"""The physical limit of decoding: every generated token reads every weight once, so tokens/s can be
no more than memory bandwidth / weight bytes. Measured here with large numpy copies (bytes read plus
bytes written per second, best of several), split over threads as a multi-threaded decode would be."""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def measure_bandwidth(mib: int = 512, repeats: int = 5, threads: int | None = None) -> dict:
    """Best copy bandwidth over `repeats` copies of a `mib`-MiB array, in bytes/s (read + written).

    The array is far larger than any cache, so the copy runs at DRAM speed; numpy's copy releases the
    GIL, so the chunks copy in parallel."""
    threads = threads or os.cpu_count() or 1
    source = np.ones(mib * 2**20 // 8, dtype=np.float64)
    target = np.empty_like(source)
    bounds = np.linspace(0, source.size, threads + 1, dtype=np.int64)
    chunks = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def copy(part: slice) -> None:
        np.copyto(target[part], source[part])

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, chunks))  # warm-up: touch every page of the target
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(copy, chunks))
            best = min(best, time.perf_counter() - start)
    return {
        "bytes_per_s": 2 * source.nbytes / best,
        "array_bytes": source.nbytes,
        "threads": threads,
        "repeats": repeats,
    }
