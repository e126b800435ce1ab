"""Models: a body that produces the last hidden layer, and an output layer chosen by name."""
from .base import Model
from .classifier import MLPClassifier
from .lm import MLPLanguageModel

MODELS = {MLPLanguageModel.kind: MLPLanguageModel, MLPClassifier.kind: MLPClassifier}


def build_model(kind: str, config: dict) -> Model:
    """Rebuild a model from its `kind` and `config()` (used by checkpoints)."""
    try:
        return MODELS[kind](**config)
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}") from None


__all__ = ["Model", "MLPLanguageModel", "MLPClassifier", "MODELS", "build_model"]
