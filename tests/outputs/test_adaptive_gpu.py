"""NumPy vs CuPy for the adaptive softmax (engine/outputs/adaptive.py) beyond the plain mean
loss of test_adaptive_output.py: reduction="none" with per-row weights, ignore_index,
predict_topk with k > 1, cutoffs chosen by the backend's measured cost model ("auto"), and
training inside the Engine.

Shapes: h (B, d), D words, cutoffs c_1 < c_2 < D, targets (B,) (-1 and ignore_index ignored).
One body per backend (`backend` fixture); the reference is the NumPy backend in float64
(tests/backend_compare.py) or the full log-softmax computed on the host from the parameters.
"""
from __future__ import annotations

import json

import numpy
import pytest
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, grads_of, host, model_state
from engine import Adam, Engine, MLPLanguageModel
from engine.outputs import AdaptiveSoftmaxOutput

D, d, CUT = 300, 16, [20, 90]


def layer(backend, dtype, **kw):
    kw.setdefault("cutoffs", CUT)
    out = AdaptiveSoftmaxOutput(d, D, tail_bias=True, div_value=2.0, verbose=False, **kw)
    out.bind(backend, numpy.random.default_rng(0), dtype)
    rng = numpy.random.default_rng(1)
    for name, p in out.params.items():          # non-zero biases: their gradients are checked
        if name.endswith("_b"):
            p[...] = backend.asarray(rng.standard_normal(p.shape).astype(dtype))
    return out


def data(rng, B=40):
    h = rng.standard_normal((B, d))
    t = rng.integers(0, D, B)
    t[:6] = [0, 19, 20, 89, 90, 299]              # both edges of every cluster
    return h, t


def compare(backend, dtype, h, t, dy=None, **kw):
    """forward + backward of the backend's layer and of the float64 NumPy one: loss (rows with
    reduction="none"), dh and every gradient (tails without rows have none on both)."""
    got, want = layer(backend, dtype, **kw), layer(REFERENCE, numpy.float64, **kw)
    h32 = h.astype(dtype)
    lg = got.forward(backend.asarray(h32), backend.asarray(t))
    lw = want.forward(h32.astype(numpy.float64), t)
    assert_close(lg, lw, dtype, err_msg="loss")
    dhg = got.backward(None if dy is None else backend.asarray(dy.astype(dtype)))
    dhw = want.backward(dy)
    assert_close(dhg, dhw, dtype, err_msg="dh")
    gg, gw = grads_of(got), grads_of(want)
    assert set(gg) == set(gw)
    for name in gw:
        assert_close(gg[name], gw[name], dtype, err_msg=name)
    return host(lg), host(lw)


def test_reduction_none_with_row_weights(backend, float_dtype):
    rng = numpy.random.default_rng(2)
    h, t = data(rng)
    t[7] = -1
    rows, _ = compare(backend, float_dtype, h, t, dy=rng.random(len(t)), reduction="none")
    assert rows.shape == (len(t),) and rows[7] == 0.0
    compare(backend, float_dtype, h, t, reduction="none")           # dy = None: weights one


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignore_index(backend, float_dtype, reduction):
    """ignore_index = 50 (a word of tail 0) and -1 rows: no loss, no gradient, not counted."""
    rng = numpy.random.default_rng(3)
    h, t = data(rng)
    t[10:16] = 50
    t[16] = -1
    compare(backend, float_dtype, h, t, ignore_index=50, reduction=reduction)
    rows = layer(backend, float_dtype, ignore_index=50, reduction="none").forward(
        backend.asarray(h.astype(float_dtype)), backend.asarray(t))
    assert (host(rows)[10:17] == 0).all() and (host(rows)[:10] > 0).all()
    kept = numpy.flatnonzero((t != 50) & (t >= 0))
    plain = layer(backend, float_dtype, reduction=reduction)
    want = plain.forward(backend.asarray(h[kept].astype(float_dtype)), backend.asarray(t[kept]))
    got = layer(backend, float_dtype, ignore_index=50, reduction=reduction).forward(
        backend.asarray(h.astype(float_dtype)), backend.asarray(t))
    assert_close(got, host(want), float_dtype)


def full_log_softmax(out, h):
    """log p over the whole vocabulary from the definition, float64 on the host."""
    P = {k: host(v) for k, v in out.params.items()}

    def lsm(z):
        z = z - z.max(1, keepdims=True)
        return z - numpy.log(numpy.exp(z).sum(1, keepdims=True))
    head = lsm(h @ P["head_W"].T + P["head_b"])
    cols = [head[:, :out.shortlist]]
    for i in range(out.n_clusters):
        z = (h @ P[f"proj{i}_W"].T) @ P[f"out{i}_W"].T + P[f"out{i}_b"]
        cols.append(lsm(z) + head[:, out.shortlist + i:out.shortlist + i + 1])
    return numpy.concatenate(cols, axis=1)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_predict_topk(backend, float_dtype, k):
    """Exact top-k over head and tails (a tail is evaluated only on the rows its cluster can
    reach): ids equal the top-k of the full log-softmax, values its entries."""
    rng = numpy.random.default_rng(4)
    out = layer(backend, float_dtype)
    h = (rng.standard_normal((25, d)) * 2.0).astype(float_dtype)
    h[:5] *= 0.05                                # flat rows: every cluster competes
    ids, logp = out.predict_topk(backend.asarray(h), k)
    ref = full_log_softmax(out, h.astype(numpy.float64))
    want = numpy.argsort(-ref, axis=1, kind="stable")[:, :k]
    assert host(ids).shape == (25, k)
    assert_array_equal(host(ids), want)
    assert_close(logp, numpy.take_along_axis(ref, want, 1), float_dtype)
    if k == 1:
        assert_array_equal(host(out.predict(backend.asarray(h))), want[:, 0])


def test_auto_cutoffs_on_the_backend(backend, tmp_path, monkeypatch):
    """cutoffs="auto" measures the cost model on the backend (cached under ENGINE_CACHE, keyed
    by the device), resolves to valid cutoffs stored in the config, and the layer with them
    computes what a NumPy layer with the same cutoffs computes."""
    from engine.outputs import adaptive_cutoffs
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(adaptive_cutoffs, "_MEMORY_CACHE", {})
    V = 3000
    counts = numpy.round(1e6 / numpy.arange(1, V + 1) ** 1.1)
    out = AdaptiveSoftmaxOutput(32, V, cutoffs="auto", counts=counts, auto_batch=64,
                                auto_max_clusters=2, verbose=False)
    out.bind(backend, numpy.random.default_rng(0), numpy.float32)
    cut = out.config()["cutoffs"]
    assert cut == out.cutoffs and all(0 < a < b for a, b in zip(cut, cut[1:] + [V]))
    tables = [json.loads(f.read_text()) for f in (tmp_path / "adaptive_cost").iterdir()]
    assert [backend.device_description() in t["key"] for t in tables] == [True]
    ref = AdaptiveSoftmaxOutput(32, V, cutoffs=cut, verbose=False)
    ref.bind(REFERENCE, numpy.random.default_rng(0), numpy.float64)
    rng = numpy.random.default_rng(5)
    h = rng.standard_normal((50, 32)).astype(numpy.float32)
    t = rng.integers(0, V, 50)
    assert_close(out.forward(backend.asarray(h), backend.asarray(t)),
                 ref.forward(h.astype(numpy.float64), t), numpy.float32)
    assert_close(out.backward(), ref.backward(), numpy.float32)


def test_engine_training_and_evaluation_match_cpu(backend, float_dtype):
    """MLPLanguageModel -> adaptive softmax trained by Engine.train_step (Adam) for 6 steps,
    then Engine.evaluate and predict_topk: the CPU float64 run is the reference."""
    rng = numpy.random.default_rng(6)
    x = rng.integers(0, D, (6 * 32, 3)).astype(numpy.int32)
    y = ((x[:, 0] * 7 + x[:, 2]) % D).astype(numpy.int32)
    y[::9] = rng.integers(200, D, len(y[::9]))    # the last tail gets rows too
    runs = []
    for be, dtype in ((REFERENCE, numpy.float64), (backend, float_dtype)):
        model = MLPLanguageModel(D, context=3, embed_dim=12, hidden=(d,), output="adaptive",
                                 output_kwargs={"cutoffs": CUT, "tail_bias": True})
        eng = Engine(model, Adam(lr=1e-2), device=be, seed=3, dtype=dtype, verbose=False)
        losses = [host(eng.train_step(be.asarray(x[i:i + 32]), be.asarray(y[i:i + 32])))
                  for i in range(0, len(x), 32)]
        ev = eng.evaluate((x, y), batch_size=50)
        ids, _ = eng.predict_topk(x[:20], 3)
        runs.append((numpy.array(losses), model_state(model), ev, host(ids)))
    (lw, sw, ew, iw), (lg, sg, eg, ig) = runs
    assert_close(lg, lw, float_dtype, err_msg="losses")
    for key in sw:
        assert_close(sg[key], sw[key], float_dtype, factor=5, err_msg=key)
    assert eg["examples"] == ew["examples"] == len(y)
    assert_close(eg["loss"], ew["loss"], float_dtype)
    assert_array_equal(ig, iw)
