"""`ondevice bench`: one harness for every backend and peer, written once against the runtime interface.

The parent process (`run.py`) plans jobs, measures the machine and writes the report; each (model,
backend) runs in a fresh child process (`python -m ondevice.bench.worker`), so that its cold load is
really cold and its peak memory is its own. The measurements (`keyboard.py`, `mlx_decode.py`,
`conversion.py`, ...) are a library: the scripts under benchmarks/ import it, never the reverse."""
