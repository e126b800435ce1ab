"""engine: training networks with huge output layers, NumPy on the CPU and CuPy on the GPU.

    from engine import Engine, MLPLanguageModel, Adam
    engine = Engine(MLPLanguageModel(vocab_size=10000, context=4), Adam(lr=1e-3), device="auto")
    engine.train("corpus.h5", epochs=5, batch_size=256, valid="corpus.h5", run_dir="auto")

Importing this package never imports CuPy; the GPU backend loads only when asked for. The names
below load on first use (PEP 562), so `engine --help` does not pay for numba and h5py.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Engine": ".engine", "TrainingDiverged": ".engine",
    "MLPLanguageModel": ".models", "MLPClassifier": ".models",
    "SGD": ".optim", "Adam": ".optim", "make_optimizer": ".optim",
    "Backend": ".backend", "get_backend": ".backend", "gpu_available": ".backend",
}

__all__ = list(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
