"""The MLP language model: whole-model finite differences for each output, and shape checks."""
import numpy
import pytest

from engine.backend import Backend
from engine.models import MLPLanguageModel, build_model
from gradcheck import check_model_gradients


@pytest.mark.parametrize("output,kw", [("softmax", {}), ("softmax", {"chunk_size": 7}), ("squared", {})])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_model_finite_difference(output, kw, dropout, activation):
    m = MLPLanguageModel(23, context=3, embed_dim=5, hidden=(8, 6), activation=activation,
                         dropout=dropout, output=output, output_kwargs=kw).bind(Backend(), 0, "float64")
    rng = numpy.random.default_rng(1)
    x = rng.integers(0, 23, (6, 3))
    x[0] = [4, 4, 4]                      # repeated ids in one context
    y = rng.integers(0, 23, 6)
    check_model_gradients(m, x, y)


def test_model_rebuilds_from_config_and_state():
    m = MLPLanguageModel(30, context=2, embed_dim=4, hidden=(5,)).bind(Backend(), 3, "float32")
    m2 = build_model(m.kind, m.config()).bind(Backend(), 99, "float32")
    m2.load_state_dict(m.state_dict())
    x = numpy.array([[1, 2], [3, 29]])
    y = numpy.array([0, 5])
    assert float(m.loss(x, y)) == float(m2.loss(x, y))


def test_model_rejects_bad_inputs():
    m = MLPLanguageModel(30, context=2, embed_dim=4, hidden=(5,)).bind(Backend(), 0, "float32")
    with pytest.raises(ValueError, match=r"expected contexts \(B, 2\)"):
        m.loss(numpy.zeros((3, 3), int), numpy.zeros(3, int))
    with pytest.raises(TypeError, match="integer token ids"):
        m.loss(numpy.zeros((3, 2)), numpy.zeros(3, int))
