"""meProp on the softmax output (the output layer's opt-in, docs/meprop.md): the weight
gradient and dh equal the masked dense reference, the bias gradient stays full, k >= D is exact."""
import numpy
import pytest

from engine.backend import Backend
from engine.row_sparse import RowSparseGrad
from engine.layers.meprop import masked_reference, select
from engine.models import MLPClassifier
from engine.outputs import make_output


def _layer(meprop, D=12, d=5):
    return make_output("softmax", d, D, meprop=meprop).bind(Backend(), numpy.random.default_rng(0),
                                                            numpy.float64)


@pytest.mark.parametrize("mode", ["per-example", "unified", "random"])
def test_softmax_meprop_equals_masked_reference(mode):
    be = Backend()
    rng = numpy.random.default_rng(1)
    h, t = rng.normal(size=(7, 5)), rng.integers(0, 12, size=7)
    cfg = {"k": 3, "mode": mode, "seed": 4}
    sparse, plain = _layer(cfg), _layer(None)
    sparse.forward(h, t)
    dh = sparse.backward()
    plain.forward(h, t)
    dh_full = plain.backward()
    # the reference: the same selection applied to the full logit gradient (softmax - onehot)
    logits = h @ plain.params["W"].T + plain.params["b"]
    p = numpy.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[numpy.arange(7), t] -= 1
    key = (4, 0, 0, sparse.layer_id, 1)
    kind, pattern = select(be, g, sparse.meprop, key)
    dW_ref, dh_ref = masked_reference(be, g, h / 7, plain.params["W"], kind, pattern)
    assert isinstance(sparse.grads["W"], RowSparseGrad)
    numpy.testing.assert_allclose(sparse.grads["W"].to_dense(be), dW_ref, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(dh, dh_ref / 7, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(sparse.grads["b"], plain.grads["b"], rtol=1e-12)  # full bias grad
    assert not numpy.allclose(dh, dh_full)


def test_k_at_least_d_is_plain_backprop():
    rng = numpy.random.default_rng(2)
    h, t = rng.normal(size=(6, 5)), rng.integers(0, 12, size=6)
    a, b = _layer({"k": 12, "mode": "per-example"}), _layer(None)
    a.forward(h, t), b.forward(h, t)
    numpy.testing.assert_array_equal(a.backward(), b.backward())
    numpy.testing.assert_array_equal(a.grads["W"], b.grads["W"])


def test_chunked_softmax_refuses_meprop_and_other_outputs_say_so():
    with pytest.raises(ValueError, match="whole mode"):
        make_output("softmax", 4, 10, chunk_size=4, meprop={"k": 2})
    with pytest.raises(ValueError, match="does not support meProp"):
        MLPClassifier(6, 3, hidden=(4,), output="squared",
                      meprop={"k": 2, "mode": "unified", "output": True})
    model = MLPClassifier(6, 3, hidden=(4,), meprop={"k": 2, "mode": "unified", "output": True})
    assert model.output.meprop["k"] == 2
