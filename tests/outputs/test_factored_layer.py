"""The factored output layer (engine/outputs/factored.py) as a layer: float64 finite differences
of dh for every loss, evaluation (log_prob, perplexity terms, predict_topk by chunks, dense
export) against the dense reference, state_dict round trip, bad input, and NumPy-vs-CuPy checks of
the row kernels (rawkernels/factored_rows.cu) and of whole steps (skipped without a GPU)."""
from __future__ import annotations

import numpy
import pytest

from devices import make_backend, to_host
from gradcheck import _check_directions
from engine.outputs import make_output
from engine.outputs.factored import gather_target_rows, scatter_outer_rows

LOSSES = ["squared", "spherical", "taylor", "zloss"]
DENSE = {"squared": "squared", "spherical": "spherical-dense", "taylor": "taylor-dense",
         "zloss": "zloss-dense"}


def _trained(loss, dtype=numpy.float64, backend="numpy", steps=20, D=60, d=8, B=6, K=2, seed=0, **kw):
    """A factored layer after a few exact steps (so U != I, a != 0)."""
    be = make_backend(backend)
    layer = make_output(f"factored-{loss}", d, D, check_every=0, **kw).bind(
        be, numpy.random.default_rng(1), dtype)
    rng = numpy.random.default_rng(seed)
    for _ in range(steps):
        h = be.asarray((rng.standard_normal((B, d)) * 0.3).astype(dtype))
        t = be.asarray(rng.integers(0, D, size=(B, K)))
        layer.forward(h, t)
        layer.backward()
        layer.apply_update(0.05)
    return layer


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("K", [1, 3])
def test_dh_matches_finite_differences(loss, K):
    layer = _trained(loss)
    rng = numpy.random.default_rng(5)
    h = rng.standard_normal((5, 8)) * 0.5
    t = rng.integers(0, 60, size=(5, K)) if K > 1 else rng.integers(0, 60, size=5)
    if K > 1:
        t[0, 1], t[1, 2] = t[0, 0], -1
    layer.forward(h, t)
    dh = layer.backward()
    layer._pending = None
    _check_directions(layer.backend, rng, lambda: layer.forward(h, t, train=False),
                      [(h, dh)], 3, 1e-6, 1e-6, f"factored-{loss}")


@pytest.mark.parametrize("loss", LOSSES)
def test_evaluation_matches_dense_export(loss):
    layer = _trained(loss)
    be = layer.backend
    W = layer.dense_weight()
    dense = make_output(DENSE[loss], 8, 60).bind(be, numpy.random.default_rng(0), numpy.float64)
    dense.params["W"] = W.copy()
    rng = numpy.random.default_rng(7)
    h = rng.standard_normal((7, 8))
    t = rng.integers(0, 60, size=7)
    numpy.testing.assert_allclose(layer.loss_per_example(h, t), dense.loss_per_example(h, t), rtol=1e-10)
    if layer.has_likelihood:
        numpy.testing.assert_allclose(layer.log_prob(h, t), dense.log_prob(h, t), rtol=1e-10)
        # normalised: exp(log p) over every class sums to 1
        allp = numpy.stack([layer.log_prob(h, numpy.full(7, c)) for c in range(60)], 1)
        numpy.testing.assert_allclose(numpy.exp(allp).sum(1), 1.0, rtol=1e-10)
    ids, vals = layer.predict_topk(h, 5, chunk_size=7)
    ids_d, vals_d = dense.predict_topk(h, 5)
    numpy.testing.assert_array_equal(ids, ids_d)
    numpy.testing.assert_allclose(vals, vals_d, rtol=1e-10)


def test_state_dict_round_trip():
    layer = _trained("taylor")
    state = layer.state_dict()
    assert {"V", "U", "Uinv_T", "Q", "a", "wbar"} <= set(state)
    fresh = make_output("factored-taylor", 8, 60).bind(make_backend("numpy"),
                                                       numpy.random.default_rng(9), numpy.float64)
    fresh.load_state_dict(state)
    h = numpy.random.default_rng(2).standard_normal((3, 8))
    t = numpy.array([1, 2, 3])
    assert float(fresh.forward(h, t, train=False)) == float(layer.forward(h, t, train=False))
    numpy.testing.assert_array_equal(fresh.dense_weight(), layer.dense_weight())


def test_bad_input_is_rejected():
    layer = _trained("squared", steps=0)
    with pytest.raises(ValueError, match="expected h"):
        layer.forward(numpy.zeros((3, 5)), numpy.array([1, 2, 3]))
    with pytest.raises(ValueError, match="target ids"):
        layer.forward(numpy.zeros((3, 8)), numpy.array([1, 2, 60]))
    with pytest.raises(ValueError, match="reduction"):
        make_output("factored-squared", 8, 60, reduction="max")
    with pytest.raises(NotImplementedError, match="no likelihood"):
        layer.log_prob(numpy.zeros((3, 8)), numpy.array([1, 2, 3]))


GPU = [pytest.param("cupy", marks=pytest.mark.gpu)]
# the NumPy backend has one scatter (the numba loop, sequential): `deterministic` selects between
# the two GPU kernels only, so it is a GPU parameter
ROW_CASES = [("numpy", False), pytest.param("cupy", False, marks=pytest.mark.gpu),
             pytest.param("cupy", True, marks=pytest.mark.gpu)]


@pytest.mark.parametrize("backend,deterministic", ROW_CASES)
def test_row_kernels_match_numpy(backend, deterministic):
    be = make_backend(backend)
    rng = numpy.random.default_rng(0)
    D, d, B, K = 50, 7, 9, 3
    V = rng.standard_normal((D, d))
    ids = rng.integers(0, D, size=B * K)
    ids[: 10] = 4                                 # one row named many times
    valid = numpy.ones(B * K, bool)
    valid[5] = False
    coef = rng.standard_normal(B * K) * valid
    rows = rng.standard_normal((B, d))
    ref = V.copy()
    numpy.add.at(ref, ids, coef[:, None] * numpy.repeat(rows, K, axis=0))
    for dt, tol in ((numpy.float64, 1e-12), (numpy.float32, 1e-5)):
        Vb = be.asarray(V.astype(dt))
        g = to_host(gather_target_rows(be, Vb, be.asarray(ids), be.asarray(valid)))
        numpy.testing.assert_allclose(g, V[ids].astype(dt) * valid[:, None], rtol=tol)
        scatter_outer_rows(be, Vb, be.asarray(ids), be.asarray(coef.astype(dt)),
                           be.asarray(rows.astype(dt)), K, deterministic)
        numpy.testing.assert_allclose(to_host(Vb), ref, rtol=tol, atol=tol)
        if deterministic:
            again = be.asarray(V.astype(dt))
            scatter_outer_rows(be, again, be.asarray(ids), be.asarray(coef.astype(dt)),
                               be.asarray(rows.astype(dt)), K, True)
            numpy.testing.assert_array_equal(to_host(again), to_host(Vb))


@pytest.mark.parametrize("backend", GPU)       # NumPy against itself would prove nothing
@pytest.mark.parametrize("loss", LOSSES)
def test_whole_steps_match_numpy(backend, loss):
    ref = _trained(loss, backend="numpy", steps=15)
    dev = _trained(loss, backend=backend, steps=15, deterministic=True)
    for k, v in ref.state_dict().items():
        numpy.testing.assert_allclose(dev.state_dict()[k], v, rtol=1e-9, atol=1e-11, err_msg=k)


def test_probe_monitor_flags_a_corrupted_q_and_the_fix_restores_it():
    """The default cheap Q monitor (random probes, O(D d p)) sees a drift of Q that the exact
    monitor sees, and run_checks then recomputes Q exactly."""
    from engine.backend import Backend
    from engine.outputs import make_output
    layer = make_output("factored-squared", 8, 300, check_every=0).bind(
        Backend(), numpy.random.default_rng(0), numpy.float64)
    clean = layer.run_checks()
    assert clean["q_check"] == "probe" and clean["q_rel_err"] < 1e-12
    layer.params["Q"][2, 5] += 1e-3 * float(numpy.abs(layer.params["Q"]).max())
    layer.params["Q"][5, 2] = layer.params["Q"][2, 5]
    exact = layer.run_checks(exact=True)
    assert exact["q_rel_err"] > 1e-6            # exact monitor sees it (and fixes it)
    layer.params["Q"][2, 5] *= 1.01
    layer.params["Q"][5, 2] = layer.params["Q"][2, 5]
    probe = layer.run_checks()
    assert probe["q_rel_err"] > 1e-8            # the probe sees it too ...
    assert any(e[1] == "recomputed Q" for e in layer.events)
    assert layer.run_checks(exact=True)["q_rel_err"] < 1e-12   # ... and Q was recomputed


def test_default_check_every_grows_with_d_over_bd():
    from engine.outputs.factored import default_check_every
    assert default_check_every(1000, 16, 8) == 235          # 30 * 1000 / 128 = 234.4
    assert default_check_every(500, 64, 128) == 100         # small D: every 100 updates
    assert default_check_every(793471, 300, 128) == 620


@pytest.mark.parametrize("loss", LOSSES)
def test_config_rebuilds_the_layer(loss):
    # a checkpoint rebuilds the layer from config(): every option must come back as it was
    layer = make_output(f"factored-{loss}", 8, 60, monitor="exact", monitor_probes=3, q_tol=1e-9,
                        inv_tol=1e-10, check_every=7, reinvert_every=11, deterministic=True)
    cfg = layer.config()
    again = type(layer)(**cfg)
    assert again.config() == cfg
    assert (again.monitor, again.monitor_probes, again.q_tol, again.inv_tol) == ("exact", 3, 1e-9, 1e-10)


def test_checks_restore_a_drifted_wbar():
    # wbar = W^T 1 is kept for the losses that use s = sum(o); when it drifts, the checks must
    # recompute it from the factors, i.e. equal the column sums of the dense W
    layer = _trained("taylor")
    W = layer.dense_weight()
    layer.params["wbar"][3] += 1e-3 * float(numpy.abs(layer.params["wbar"]).max())
    mon = layer.run_checks(exact=True)
    assert mon["wbar_rel_err"] > 1e-6
    numpy.testing.assert_allclose(layer.params["wbar"], W.sum(axis=0), rtol=1e-12, atol=1e-12)
