"""Layers: Embedding (row-sparse gradient), Linear, activations, dropout."""
from .base import Layer, OutputLayer, RowSparseGrad
from .linear import Linear
from .embedding import Embedding
from .activations import Tanh, ReLU, make_activation
from .dropout import Dropout
from .sparse_linear import SparseLinear
from .fixed_fanin import FixedFanInLinear

__all__ = ["Layer", "OutputLayer", "RowSparseGrad", "Linear", "Embedding", "Tanh", "ReLU",
           "make_activation", "Dropout", "SparseLinear",
           "FixedFanInLinear"]
