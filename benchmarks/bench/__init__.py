"""`ondevice bench`: one harness for every backend and peer, written once against the runtime interface.

The parent process (`run.py`) plans jobs, measures the machine and writes the report; each (model,
backend) runs in a fresh child process (`worker.py`), so that its cold load is really cold and its
peak memory is its own."""
