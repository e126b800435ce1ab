"""engine: training networks with huge output layers, NumPy on the CPU and CuPy on the GPU.

    from engine import Engine, MLPLanguageModel, Adam
    engine = Engine(MLPLanguageModel(vocab_size=10000, context=4), Adam(lr=1e-3), device="auto")
    engine.train("corpus.h5", epochs=5, batch_size=256, valid="corpus.h5", run_dir="auto")

Importing this package never imports CuPy; the GPU backend loads only when asked for.
"""
from .backend import Backend, get_backend, gpu_available
from .engine import Engine, TrainingDiverged
from .models import MLPClassifier, MLPLanguageModel
from .optim import SGD, Adam, make_optimizer

__version__ = "0.1.0"

__all__ = ["Engine", "TrainingDiverged", "MLPLanguageModel", "MLPClassifier", "SGD", "Adam", "make_optimizer",
           "Backend", "get_backend", "gpu_available", "__version__"]
