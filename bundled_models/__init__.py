"""Models that ship inside the package, so the main job works right after install with no download.

Data only, and a package of its own at the bottom of the layers: `convert/locate.py` finds bundled names here
without importing the user-facing `ondevice` package above it."""

from pathlib import Path

KEYBOARD_GPT2 = Path(__file__).resolve().parent / "keyboard-gpt2"


def keyboard_gpt2_path() -> Path:
    """The bundled predictive-text GPT-2 (its MODEL_CARD.md says what it is and how it was made)."""
    return KEYBOARD_GPT2
