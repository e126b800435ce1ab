"""Models: a body that produces the last hidden layer, and an output layer chosen by name.

`MODELS` lists them by kind; `build_model(kind, config)` rebuilds one from a checkpoint's
config; `engine.models.build.build_model_for(info, options)` builds one for a dataset.
"""
from .base import Model
from .classifier import MLPClassifier
from .lm import MLPLanguageModel

MODELS = {MLPLanguageModel.kind: MLPLanguageModel, MLPClassifier.kind: MLPClassifier}


def build_model(kind: str, config: dict) -> Model:
    """Rebuild a model from its `kind` and `config()` (used by checkpoints)."""
    try:
        cls = MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}") from None
    config = dict(config)
    out_kw = dict(config.get("output_kwargs") or {})
    # older checkpoints named the data file for the label counts; their state holds the counts
    if isinstance(out_kw.get("label_counts"), str):
        del out_kw["label_counts"]
        config["output_kwargs"] = out_kw
    return cls(**config)


def build_model_for(info, options=None, **kwargs):
    """The model for a dataset description (see engine/models/build.py)."""
    from .build import build_model_for as build
    return build(info, options, **kwargs)


__all__ = ["Model", "MLPLanguageModel", "MLPClassifier", "MODELS", "build_model", "build_model_for"]
