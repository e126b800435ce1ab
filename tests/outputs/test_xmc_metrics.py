"""XMC metrics: hand-computed small cases, the chunked top-k against a dense NumPy computation,
propensities against the formula of Jain et al. (2016), and the normalisation of PSP@k."""
import math

import numpy
import pytest

from devices import BACKEND_PARAMS, make_backend, to_host
from engine.backend import Backend
from engine.outputs.xmc_metrics import (TopK, finish_metrics, inverse_propensity, metric_sums,
                                        unique_targets)


def dense_reference(scores, labels, inv_prop, ks=(1, 3, 5)):
    """Direct per-example computation over the full (B, L) score matrix, in plain Python."""
    B, L = scores.shape
    out = {f"{m}@{k}": 0.0 for m in ("p", "ndcg", "psp", "psp_best") for k in ks}
    for b in range(B):
        order = sorted(range(L), key=lambda l: (-scores[b, l], l))
        pos = set(int(t) for t in labels[b] if t >= 0)
        best = sorted((inv_prop[l] for l in pos), reverse=True)
        for k in ks:
            top = order[:k]
            out[f"p@{k}"] += sum(l in pos for l in top) / k
            dcg = sum((l in pos) / math.log2(j + 2) for j, l in enumerate(top))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(pos))))
            out[f"ndcg@{k}"] += dcg / idcg if pos else 0.0
            out[f"psp@{k}"] += sum(inv_prop[l] for l in top if l in pos) / k
            out[f"psp_best@{k}"] += sum(best[:k]) / k
    return out


def test_hand_computed_case():
    # one example, labels {2, 4}; ranking 4, 0, 2, 1, 3
    scores = numpy.array([[0.5, 0.1, 0.3, 0.0, 0.9]])
    top = TopK(Backend(), 1, 5, scores.dtype)
    top.add(scores, 0)
    ids, vals = top.result()
    numpy.testing.assert_array_equal(ids, [[4, 0, 2, 1, 3]])
    inv = numpy.array([1.0, 1.0, 4.0, 1.0, 2.0])
    s = metric_sums(numpy, ids, numpy.array([[2, 4, -1]]), inv)
    assert s["p@1"] == 1.0 and s["p@3"] == pytest.approx(2 / 3) and s["p@5"] == pytest.approx(0.4)
    assert s["ndcg@1"] == 1.0
    assert s["ndcg@3"] == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert s["psp@1"] == pytest.approx(2.0) and s["psp_best@1"] == pytest.approx(4.0)
    assert s["psp@3"] == pytest.approx(6 / 3) and s["psp_best@3"] == pytest.approx(6 / 3)
    m = finish_metrics({"count": 1.0, "loss": 3.0, **{k: float(v) for k, v in s.items()}})
    assert m["psp@1"] == pytest.approx(0.5) and m["psp@3"] == pytest.approx(1.0)
    assert m["loss"] == 3.0 and not any(k.startswith("psp_best") for k in m)


@pytest.mark.parametrize("chunk", [1, 2, 6])
def test_kept_ties_are_ordered_by_label_id(chunk):
    scores = numpy.array([[0.0, 1.0, 2.0, 1.0, 1.0, -1.0]])
    top = TopK(Backend(), 1, 4, scores.dtype)
    for c0 in range(0, 6, chunk):
        top.add(scores[:, c0:c0 + chunk], c0)
    ids, vals = top.result()
    numpy.testing.assert_array_equal(ids, [[2, 1, 3, 4]])
    numpy.testing.assert_array_equal(vals, [[2.0, 1.0, 1.0, 1.0]])


def test_example_without_labels_and_duplicate_targets():
    ids = numpy.array([[0, 1, 2], [0, 1, 2]])
    t = numpy.array([[-1, -1], [1, 1]])                 # no labels; label 1 named twice
    numpy.testing.assert_array_equal(unique_targets(numpy, t), [[-1, -1], [1, -1]])
    s = metric_sums(numpy, ids, t, numpy.ones(3), ks=(1, 3))
    assert s["p@1"] == 0.0 and s["p@3"] == pytest.approx(1 / 3)
    assert s["ndcg@3"] == pytest.approx(1 / math.log2(3))      # one positive: IDCG = 1
    assert s["psp_best@3"] == pytest.approx(1 / 3)


def test_fewer_labels_than_k():
    scores = numpy.array([[0.2, 0.8]])
    top = TopK(Backend(), 1, 5, scores.dtype)
    top.add(scores, 0)
    ids, _ = top.result()
    assert ids.shape == (1, 2)
    s = metric_sums(numpy, ids, numpy.array([[0, 1]]))
    assert s["p@1"] == 1.0 and s["p@5"] == pytest.approx(2 / 5)
    assert s["ndcg@5"] == pytest.approx(1.0)



def test_single_label_with_padding():
    # L = 1: the padded target slots must not index a label that does not exist.
    ids = numpy.array([[0], [0]])
    t = numpy.array([[0, -1], [-1, -1]])
    inv = numpy.array([3.0])
    s = metric_sums(numpy, ids, t, inv, ks=(1,))
    ref = dense_reference(numpy.array([[1.0], [1.0]]), t, inv, ks=(1,))
    for key, value in ref.items():
        assert float(s[key]) == pytest.approx(value, rel=1e-12), key
    assert s["psp@1"] == 3.0 and s["psp_best@1"] == 3.0

def test_propensity_formula():
    counts = numpy.array([0, 1, 10, 1000])
    n = 5000
    c = (math.log(n) - 1) * (1.5 + 1) ** 0.55
    expected = [1 + c * (x + 1.5) ** -0.55 for x in counts]
    numpy.testing.assert_allclose(inverse_propensity(counts, n), expected, rtol=1e-12)
    assert numpy.all(numpy.diff(inverse_propensity(counts, n)) < 0)     # rare labels weigh more
    with pytest.raises(ValueError):
        inverse_propensity(numpy.ones((2, 2)), 10)


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_topk_metrics_equal_dense_reference(backend_name, chunk):
    be = make_backend(backend_name)
    xp = be.xp
    rng = numpy.random.default_rng(chunk)
    B, L = 23, 64
    scores = rng.standard_normal((B, L))
    labels = numpy.full((B, 6), -1)
    for b in range(B):
        n = rng.integers(0, 7)
        labels[b, :n] = rng.choice(L, size=n, replace=False)
    inv = inverse_propensity(rng.integers(0, 50, size=L), 1000)
    top = TopK(be, B, 5, numpy.float64)
    for c0 in range(0, L, chunk):
        top.add(be.asarray(scores[:, c0:c0 + chunk]), c0)
    ids, _ = top.result()
    sums = metric_sums(xp, ids, be.asarray(labels), be.asarray(inv))
    ref = dense_reference(scores, labels, inv)
    for key, value in ref.items():
        assert float(to_host(sums[key])) == pytest.approx(value, rel=1e-12, abs=1e-12), key
