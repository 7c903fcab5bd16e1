"""Benchmarks: each prints a table and writes JSON (and a PNG plot) under benchmarks/results/."""
