"""Command-line front ends of the benchmark library `ondevice.bench` (each prints a table; some write
JSON and a PNG plot under benchmarks/results/). `ondevice bench` runs the whole harness."""
