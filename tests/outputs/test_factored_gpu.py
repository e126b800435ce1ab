"""NumPy vs CuPy for the factored output layer (engine/outputs/factored.py, factored_state.py)
beyond the row kernels and the deterministic float64 steps of test_factored_layer.py: float32
against a dense float64 run, the atomic scatter in whole steps (layer and Engine), -1 padding,
the monitors, band fixes, re-inversion and unfactorize, inverse="solve", predict_topk and
log_prob.

Shapes: h (B, d), D outputs, targets (B,) or (B, K) padded with -1; state V (D, d), U, Uinv_T,
Q (d, d) [, a, wbar (d,)]. One body per backend (`backend` fixture); the reference is the NumPy
backend in float64 (tests/backend_compare.py).
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, host, model_state
from engine import Adam, Engine, MLPClassifier
from engine.outputs import factored_state as fs
from engine.outputs import make_output

DENSE = {"squared": "squared", "spherical": "spherical-dense", "taylor": "taylor-dense",
         "zloss": "zloss-dense"}
D, d = 70, 8


def targets(rng, B, K):
    """(B,) with an ignored row, or (B, K) with padding, a repeated label and an empty row."""
    t = rng.integers(0, D, size=(B, K))
    t[: B // 3, 0] = 5                                  # a row of V named many times
    if K == 1:
        t[1, 0] = -1
        return t[:, 0]
    t[0, 1] = t[0, 0]
    t[1, 1:] = -1
    t[2, :] = -1
    return t


def factored(backend, loss, dtype, **kw):
    kw.setdefault("check_every", 0)
    return make_output(f"factored-{loss}", d, D, **kw).bind(backend, numpy.random.default_rng(1),
                                                            dtype)


def train(layer, steps, B=6, K=1, lr=0.05, seed=0):
    """Exact SGD steps of the layer alone; returns the per-step (loss, dh) on the host."""
    be = layer.backend
    rng = numpy.random.default_rng(seed)
    out = []
    for _ in range(steps):
        h = (rng.standard_normal((B, d)) * 0.3).astype(layer.dtype)
        t = targets(rng, B, K)
        layer.prepare_update(lr)
        loss = layer.forward(be.asarray(h), be.asarray(t))
        dh = layer.backward()
        layer.apply_update(lr)
        out.append((host(loss), host(dh)))
    return out


def state(layer):
    return {k: host(v) for k, v in layer.params.items()}


def twin(layer):
    """A float64 NumPy copy of `layer` (same configuration and state, the state as stored)."""
    ref = make_output(f"factored-{layer.loss_name}", d, D,
                      **{k: v for k, v in layer.config().items()
                         if k not in ("in_features", "num_classes", "loss")})
    ref.bind(REFERENCE, numpy.random.default_rng(1), numpy.float64)
    ref.load_state_dict(state(layer))
    return ref


# ------------------------------------------------------------------ float32 vs dense float64
@pytest.mark.parametrize("loss,lr,kw", [("squared", 0.05, {}), ("zloss", 0.5, {}),
                                        ("spherical", 0.02, {"loss_kwargs": {"eps": 1e-2}})])
def test_float32_tracks_a_dense_float64_run(backend, loss, lr, kw):
    """The float32 factored layer (monitors every 20 updates) against the dense float64 layer
    on the same (rounded) inputs, 80 steps of K = 2 targets with padding: W = V U + 1 a^T, the
    losses and dh stay within 1e-3 (as test_factored_exact.py asks of the CPU)."""
    rng = numpy.random.default_rng(3)
    dense = make_output(DENSE[loss], d, D, **kw).bind(REFERENCE, numpy.random.default_rng(1),
                                                       numpy.float64)
    fact = factored(backend, loss, numpy.float32, check_every=20, **kw)
    worst = 0.0
    for _ in range(80):
        h = (rng.standard_normal((12, d)) * 0.3).astype(numpy.float32)
        t = targets(rng, 12, 2)
        ld = float(dense.forward(h.astype(numpy.float64), t))
        dhd = dense.backward()
        fact.prepare_update(lr)
        lf = float(host(fact.forward(backend.asarray(h), backend.asarray(t))))
        dhf = host(fact.backward())
        fact.apply_update(lr)
        dense.params["W"] -= lr * dense.grads["W"]
        worst = max(worst, abs(lf - ld) / abs(ld),
                    float(numpy.linalg.norm(dhf - dhd) / numpy.linalg.norm(dhd)))
    Wd = dense.params["W"]
    rel = float(numpy.linalg.norm(fact.dense_weight() - Wd) / numpy.linalg.norm(Wd))
    assert rel <= 1e-3 and worst <= 1e-3, (rel, worst)
    assert fact.last_monitors is not None and fact.last_monitors["q_rel_err"] < 1e-3


# ------------------------------------------------------------------ whole steps, every option
STEP_CASES = [("squared", 1, "woodbury", False, False), ("taylor", 3, "woodbury", False, False),
              ("spherical", 3, "solve", False, False), ("zloss", 1, "solve", True, False),
              ("squared", 3, "solve", True, False), ("spherical", 1, "woodbury", False, True),
              ("zloss", 3, "woodbury", True, True)]


@pytest.mark.parametrize("loss,K,inverse,deterministic,bias", STEP_CASES)
def test_whole_steps_match_reference(backend, loss, K, inverse, deterministic, bias):
    """15 exact steps (atomic or deterministic scatter, Woodbury or solve, -1 padding, K-hot,
    with and without an output bias), with re-inversion every 4, Q recomputed every 6 and the
    monitors every 5 updates: losses, dh, the whole state and the monitors' events equal the
    float64 NumPy run."""
    kw = dict(inverse=inverse, deterministic=deterministic, reinvert_every=4,
              recompute_q_every=6, check_every=5, bias=bias)
    ref = factored(REFERENCE, loss, numpy.float64, **kw)
    dev = factored(backend, loss, numpy.float64, **kw)
    want, got = train(ref, 15, K=K), train(dev, 15, K=K)
    for step, ((lw, dw), (lg, dg)) in enumerate(zip(want, got)):
        assert_close(lg, lw, numpy.float64, err_msg=f"loss {step}")
        assert_close(dg, dw, numpy.float64, err_msg=f"dh {step}")
    for k, v in state(ref).items():
        assert_close(state(dev)[k], v, numpy.float64, err_msg=k)
    assert dev.events == ref.events and dev.updates == ref.updates == 15


@pytest.mark.parametrize("deterministic", [False, True])
def test_engine_steps_with_k_hot_targets(backend, deterministic):
    """MLPClassifier -> factored-squared with (B, 3) targets (padding, an empty row) trained by
    Engine.train_step (Adam on the body, the exact SGD step on the output; atomic scatter unless
    deterministic): losses and the whole model equal the CPU's in float64."""
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal((5 * 16, 12))
    y = numpy.stack([rng.choice(D, 3, replace=False) for _ in range(5 * 16)])
    y[::16, 1:] = -1
    y[1::16, :] = -1
    runs = []
    for be in (REFERENCE, backend):
        model = MLPClassifier(12, D, hidden=(d,), output="factored-squared",
                              output_kwargs={"lr": 0.02, "deterministic": deterministic,
                                             "check_every": 2})
        eng = Engine(model, Adam(1e-2), device=be, seed=2, dtype="float64", verbose=False)
        losses = [host(eng.train_step(be.asarray(x[i:i + 16]), be.asarray(y[i:i + 16])))
                  for i in range(0, len(x), 16)]
        runs.append((losses, model_state(model), model.output.events))
    (lw, sw, ew), (lg, sg, eg) = runs
    assert_close(numpy.array(lg), numpy.array(lw), numpy.float64)
    for k in sw:
        assert_close(sg[k], sw[k], numpy.float64, err_msg=k)
    assert eg == ew


# ------------------------------------------------------------------ numerical care
def spread_state(layer, sigmas):
    """Give `layer` the same W with U = P diag(sigmas) P^T (V = W U^-1, Uinv_T, Q, wbar exact):
    singular values chosen far from any band edge used below."""
    rng = numpy.random.default_rng(8)
    W = layer.dense_weight().astype(numpy.float64)
    P, _ = numpy.linalg.qr(rng.standard_normal((d, d)))
    U = P @ numpy.diag(sigmas) @ P.T
    st = state(layer)
    if "a" in st:
        W = W - st["a"]
    st.update(V=W @ numpy.linalg.inv(U), U=U, Uinv_T=numpy.linalg.inv(U).T)
    layer.load_state_dict(st)
    fs.recompute_Q(layer.params, layer.backend.xp)


SIGMAS = [0.3, 0.6, 0.9, 1.0, 1.1, 1.5, 2.5, 3.0]


@pytest.mark.parametrize("loss", ["squared", "taylor"])
def test_numerical_care_matches_reference(backend, float_dtype, loss):
    """On the same state: the exact and the probe monitors (after Q and U^-1 were perturbed),
    run_checks' re-inversion and Q recomputation, the band fixes (one rank-1 fix; unfactorize
    when more than a third of the singular values are out) and unfactorize keep W and equal
    the float64 NumPy results."""
    dev = factored(backend, loss, float_dtype, band=(0.1, 10.0))   # run_checks: no band fix
    train(dev, 3)
    spread_state(dev, SIGMAS)
    xp = backend.xp
    dev.params["Q"][2, 5] += 0.05                     # drifts the monitors will see
    dev.params["Q"][5, 2] += 0.05
    dev.params["Uinv_T"][0, 1] += 1e-3
    ref = twin(dev)
    for exact, keys in ((True, ("q_rel_err", "inv_err")), (False, ("q_rel_err",))):
        mg, mw = dev.run_checks(exact=exact), ref.run_checks(exact=exact)
        assert set(mg) == set(mw)
        for key in keys:            # (inv_err is at rounding level once U^-1 was re-inverted)
            assert_close(mg[key], mw[key], float_dtype, factor=10, err_msg=key)
        for layer in (dev, ref):
            layer.params["Q"][2, 5] += 0.05
            layer.params["Q"][5, 2] += 0.05
    assert [e[1] for e in dev.events] == [e[1] for e in ref.events] == [
        "reinverted", "recomputed Q", "recomputed Q"]
    for k, v in state(ref).items():
        assert_close(state(dev)[k], v, float_dtype, err_msg=k)
    for band, outcome in (((0.25, 2.75), "fixed:1"), ((0.5, 2.0), "unfactorized")):
        spread_state(dev, SIGMAS)
        ref = twin(dev)
        W0 = ref.dense_weight()
        got = fs.fix_band(dev.params, xp, *band)
        assert got == fs.fix_band(ref.params, numpy, *band) == outcome
        assert_close(dev.dense_weight(), W0, float_dtype, err_msg=f"W after {outcome}")
        for k, v in state(ref).items():
            assert_close(state(dev)[k], v, float_dtype, err_msg=f"{outcome} {k}")
    for op in (fs.reinvert, fs.unfactorize, fs.recompute_Q):
        spread_state(dev, SIGMAS)
        ref = twin(dev)
        op(dev.params, xp)
        op(ref.params, numpy)
        for k, v in state(ref).items():
            assert_close(state(dev)[k], v, float_dtype, err_msg=f"{op.__name__} {k}")
        if op is fs.unfactorize:
            assert_array_equal(state(dev)["U"], numpy.eye(d))


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("loss", ["squared", "spherical", "taylor", "zloss"])
def test_predict_topk_log_prob_and_padded_losses(backend, float_dtype, loss):
    """After a few steps: predict_topk by chunks of V's rows (chunk 7 < D), log_prob where the
    loss defines a likelihood, and the per-example loss of K-hot targets with -1 padding."""
    dev = factored(backend, loss, float_dtype)
    train(dev, 5, K=2)
    ref = twin(dev)
    rng = numpy.random.default_rng(9)
    h = (rng.standard_normal((11, d)) * 0.5).astype(float_dtype)
    hb, h64 = backend.asarray(h), h.astype(numpy.float64)
    ids, vals = dev.predict_topk(hb, 5, chunk_size=7)
    ids_r, vals_r = ref.predict_topk(h64, 5, chunk_size=7)
    assert_array_equal(host(ids), ids_r)
    assert_close(vals, vals_r, float_dtype)
    t3 = targets(rng, 11, 3)
    assert_close(dev.loss_per_example(hb, backend.asarray(t3)), ref.loss_per_example(h64, t3),
                 float_dtype)
    if ref.has_likelihood:
        t = rng.integers(0, D, 11)
        assert_close(dev.log_prob(hb, backend.asarray(t)), ref.log_prob(h64, t), float_dtype)
