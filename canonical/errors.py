"""Error types of our own, so the CLI can print one line for a user's mistake and exit non-zero,
while library callers still get an exception they can catch by type."""


class OndeviceError(Exception):
    """Base class: anything the CLI reports as a one-line message instead of a traceback."""


class CheckpointError(OndeviceError):
    """A checkpoint cannot be read: missing files, unknown architecture, bad or mismatched weights."""


class ConversionError(OndeviceError):
    """A model cannot be converted or written as asked (target too old, output exists, ...)."""


class InputError(OndeviceError):
    """Inputs the model cannot take: a sequence longer than its positions, an empty prompt, ..."""
