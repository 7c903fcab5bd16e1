"""The user-facing side of ondevice-transformers: the `ondevice` CLI, the backend-agnostic runtime
and the backends that implement it."""
