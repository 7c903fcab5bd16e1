"""The user-facing side of ondevice-transformers: the `ondevice` CLI, the backend-agnostic runtime
and the backends that implement it."""

from ondevice import startup as _startup

_startup.install()  # the console script only: an early Ctrl-C exits quietly (see startup.py)
