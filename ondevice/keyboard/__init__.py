"""On-device predictive text: next-word suggestions and completion of the word being typed."""

from ondevice.keyboard.beam import Suggestion
from ondevice.keyboard.predictor import Predictor

__all__ = ["Predictor", "Suggestion"]
