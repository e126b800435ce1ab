"""meProp on Linear (engine/layers/meprop.py): exactness at k = n, the masked dense reference,
finite differences of the exact parts, the random mode's seeding, optimizers on meProp's
row-sparse gradients, and NumPy-vs-CuPy (skipped without a GPU)."""
import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from engine.backend import Backend
from engine.layers import Linear, ReLU, RowSparseGrad
from engine.layers import meprop as mp
from engine.optim import SGD, Adam
from gradcheck import _directional, assert_directional_match, dense_grad

MODES = ["per-example", "unified", "random"]


@pytest.fixture
def be():
    return Backend()


def bound(layer, be, dtype=numpy.float64, seed=0):
    return layer.bind(be, numpy.random.default_rng(seed), dtype)


def data(B, I, O, dtype=numpy.float64, seed=1):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((B, I)).astype(dtype), rng.standard_normal((B, O)).astype(dtype)


def run_backward(layer, x, dy):
    layer.forward(x, train=True)
    dx = layer.backward(dy.copy())
    return dx, dict(layer.grads)


# ------------------------------------------------------------------------ k = n: exact
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("k", [6, 50])
def test_k_at_least_n_is_plain_backprop_bit_for_bit(be, mode, dtype, k):
    x, dy = data(5, 4, 6, dtype)
    plain = bound(Linear(4, 6), be, dtype)
    sparse = bound(Linear(4, 6, meprop={"k": k, "mode": mode, "seed": 3}), be, dtype)
    dx0, g0 = run_backward(plain, x, dy)
    dx1, g1 = run_backward(sparse, x, dy)
    assert_array_equal(dx1, dx0)
    for name in ("W", "b"):
        assert_array_equal(dense_grad(be, g1[name]), g0[name])


def tiny_net(be, dtype, meprop, seed=0):
    layers = [Linear(5, 8, meprop=meprop), ReLU(), Linear(8, 7, meprop=meprop)]
    rng = numpy.random.default_rng(seed)
    for i, layer in enumerate(layers):
        layer.layer_id = i
        layer.bind(be, rng, dtype)
    return layers


def train_steps(be, dtype, meprop, opt, steps=6):
    layers = tiny_net(be, dtype, meprop)
    opt.bind(be)
    rng = numpy.random.default_rng(7)
    for step in range(steps):
        x = rng.standard_normal((4, 5)).astype(dtype)
        t = rng.standard_normal((4, 7)).astype(dtype)
        h = x
        for layer in layers:
            if hasattr(layer, "key"):
                layer.key = (0, step)
            h = layer.forward(h, train=True)
        d = (h - t) / dtype(4)               # squared-error gradient
        for layer in reversed(layers):
            d = layer.backward(d)
        items = [(f"{i}.{n}", layer.params[n], layer.grads[n])
                 for i, layer in enumerate(layers) for n in layer.params]
        opt.step(items)
    return [layer.params[n].copy() for layer in layers for n in layer.params]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9),
                                      lambda: Adam(1e-2),
                                      lambda: Adam(1e-2, sparse_mode="dense")],
                         ids=["sgd-momentum", "adam-lazy", "adam-dense"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_k_equal_n_training_equals_plain_over_steps(be, mode, make_opt, dtype):
    plain = train_steps(be, dtype, None, make_opt())
    sparse = train_steps(be, dtype, {"k": 8, "mode": mode, "seed": 1}, make_opt())
    for a, b in zip(plain, sparse):
        assert_array_equal(b, a)


@pytest.mark.parametrize("meprop", [None, {"k": 3, "mode": "per-example"},
                                    {"k": 3, "mode": "unified"}, {"k": 3, "mode": "random"}])
def test_input_grad_false_skips_dx_only(be, meprop):
    x, dy = data(5, 4, 6)
    full = bound(Linear(4, 6, meprop=meprop), be)
    first = bound(Linear(4, 6, meprop=meprop, input_grad=False), be)
    _, g0 = run_backward(full, x, dy)
    assert run_backward(first, x, dy)[0] is None
    for name in ("W", "b"):
        assert_array_equal(dense_grad(be, first.grads[name]), dense_grad(be, g0[name]))
    assert first.config()["input_grad"] is False and "input_grad" not in full.config()


# ------------------------------------------------------------- masked dense reference
def reference_pattern(dy, k, mode):
    """Independent float64 reference of the selection (sorting, not argpartition)."""
    B, O = dy.shape
    mask = numpy.zeros((B, O))
    if mode == "unified":
        cols = numpy.argsort(-numpy.abs(dy).sum(axis=0), kind="stable")[:k]
        mask[:, cols] = 1
    else:
        for b in range(B):
            mask[b, numpy.argsort(-numpy.abs(dy[b]), kind="stable")[:k]] = 1
    return mask


@pytest.mark.parametrize("mode", ["per-example", "unified"])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_equals_masked_dense_reference(be, mode, k, dtype, tol=None):
    x, dy = data(9, 6, 11, dtype, seed=k)
    layer = bound(Linear(6, 11, meprop={"k": k, "mode": mode}), be, dtype)
    dx, g = run_backward(layer, x, dy)
    x64, dy64 = x.astype(numpy.float64), dy.astype(numpy.float64)
    W64 = layer.params["W"].astype(numpy.float64)
    dyt = dy64 * reference_pattern(dy64, k, mode)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == numpy.float64 else dict(rtol=1e-5, atol=1e-5)
    assert isinstance(g["W"], RowSparseGrad) and g["W"].unique
    rows = g["W"].rows
    assert numpy.all(numpy.diff(rows) > 0)
    assert_array_equal(rows, numpy.flatnonzero(numpy.abs(dyt).sum(axis=0)))   # only used rows
    assert_allclose(dense_grad(be, g["W"]), dyt.T @ x64, **tol)
    assert_allclose(dx, dyt @ W64, **tol)
    assert_allclose(g["b"], dy64.sum(axis=0), **tol)        # the full dy
    if mode == "unified":
        assert rows.size == k
    else:
        assert all(numpy.count_nonzero(r) == k for r in dyt)


def test_masked_reference_helper_agrees(be):
    x, dy = data(6, 5, 9)
    W = numpy.random.default_rng(3).standard_normal((9, 5))
    for cfg in ({"k": 4, "mode": "per-example", "seed": 0}, {"k": 4, "mode": "unified", "seed": 0},
                {"k": 4, "mode": "random", "seed": 2}):
        kind, pattern = mp.select(be, dy, cfg, (2, 0, 0, 0, 1))
        g, dx = mp.meprop_backward(be, dy, x, W, cfg, (2, 0, 0, 0, 1))
        dW_ref, dx_ref = mp.masked_reference(be, dy, x, W, kind, pattern)
        assert_allclose(dense_grad(be, g), dW_ref, rtol=1e-12, atol=1e-12)
        assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- finite differences (float64)
@pytest.mark.parametrize("mode", MODES)
def test_finite_differences_of_the_exact_parts(be, mode):
    """dW and dx are the exact gradients of sum(y * (R * mask)) (the masked loss), db of
    sum(y * R) (the full one); checked along random directions."""
    layer = bound(Linear(6, 10, meprop={"k": 3, "mode": mode, "seed": 5}), be)
    rng = numpy.random.default_rng(11)
    x = rng.standard_normal((4, 6))
    R = rng.standard_normal((4, 10))
    layer.key = (1, 2)
    kind, pattern = mp.select(be, R, layer.meprop, (5, 1, 2, layer.layer_id, 1))
    mask = mp.selection_mask(be, R.shape, kind, pattern)
    dx, g = run_backward(layer, x, R)
    W, b = layer.params["W"], layer.params["b"]
    for t in range(3):
        dW_dir, dx_dir, db_dir = (rng.standard_normal(a.shape) for a in (W, x, b))
        masked = lambda: (layer.forward(x, train=False) * (R * mask)).sum()
        num = _directional(masked, [W, x], [dW_dir, dx_dir], 1e-6)
        ana = (dense_grad(be, g["W"]) * dW_dir).sum() + (dx * dx_dir).sum()
        assert_directional_match(ana, num, rtol=1e-6, what=f"{mode} dW,dx trial {t}")
        full = lambda: (layer.forward(x, train=False) * R).sum()
        num_b = _directional(full, [b], [db_dir], 1e-6)
        assert_directional_match((g["b"] * db_dir).sum(), num_b, rtol=1e-6, what=f"{mode} db")


# ------------------------------------------------------------------------ random mode
def random_pattern(be, seed, key, B=6, O=20, k=4, calls=1):
    layer = bound(Linear(3, O, meprop={"k": k, "mode": "random", "seed": seed}), be)
    layer.layer_id = 2
    layer.key = key
    x, dy = data(B, 3, O)
    for _ in range(calls):
        _, g = run_backward(layer, x, dy)
    return g["W"].rows, numpy.flatnonzero(numpy.abs(dense_grad(be, g["W"])).sum(axis=1))


def test_random_is_reproducible_by_seed_and_differs_across_seeds_and_steps(be):
    a = mp.random_rows(be, 6, 20, 4, (1, 0, 3, 2, 1))
    assert_array_equal(a, mp.random_rows(be, 6, 20, 4, (1, 0, 3, 2, 1)))
    assert not numpy.array_equal(a, mp.random_rows(be, 6, 20, 4, (2, 0, 3, 2, 1)))   # seed
    assert not numpy.array_equal(a, mp.random_rows(be, 6, 20, 4, (1, 0, 4, 2, 1)))   # step
    assert a.shape == (6, 4)
    assert all(len(set(r)) == 4 for r in a) and a.min() >= 0 and a.max() < 20
    assert all(numpy.all(numpy.diff(r) > 0) for r in a)
    # through the layer: same seed and key -> same rows; the key is (seed, model key, layer, call)
    assert_array_equal(random_pattern(be, 1, (0, 3))[0], random_pattern(be, 1, (0, 3))[0])
    assert not numpy.array_equal(random_pattern(be, 1, (0, 3))[0],
                                 random_pattern(be, 9, (0, 3))[0])



def test_random_rows_with_row_offset_are_those_rows_of_the_global_batch(be):
    # a rank holding rows [r, r + B) of a global minibatch draws exactly those rows' patterns
    key = (1, 0, 3, 2, 1)
    whole = mp.random_rows(be, 10, 20, 4, key)
    for r, B in [(0, 10), (3, 4), (7, 3)]:
        assert_array_equal(mp.random_rows(be, B, 20, 4, key, row_offset=r), whole[r:r + B])

def test_random_rows_are_roughly_uniform(be):
    idx = mp.random_rows(be, 4000, 10, 3, (0, 1))
    counts = numpy.bincount(idx.reshape(-1), minlength=10) / idx.size
    assert_allclose(counts, 0.1, atol=0.01)


# ---------------------------------------------------------------------------- config
def test_config_round_trip_and_errors(be):
    layer = Linear(4, 6, meprop={"k": 2, "mode": "unified", "seed": 4, "output": True})
    cfg = layer.config()
    assert cfg["meprop"] == {"k": 2, "mode": "unified", "seed": 4}
    assert Linear(**cfg).config() == cfg
    assert "meprop" not in Linear(4, 6).config()
    with pytest.raises(ValueError, match="mode"):
        Linear(4, 6, meprop={"k": 2, "mode": "top"})
    with pytest.raises(ValueError, match="k must be a positive integer"):
        Linear(4, 6, meprop={"k": 0})
    with pytest.raises(ValueError, match="unknown keys"):
        Linear(4, 6, meprop={"k": 2, "kk": 1})
    with pytest.raises(TypeError):
        Linear(4, 6, meprop=3)


# -------------------------------------------------------------- optimizers on meProp grads
@pytest.mark.parametrize("mode", ["per-example", "unified"])
def test_lazy_optimizers_touch_only_selected_rows(be, mode):
    x, dy = data(2, 4, 12)
    for opt in (SGD(0.1, momentum=0.9), Adam(1e-2)):
        layer = bound(Linear(4, 12, meprop={"k": 2, "mode": mode}), be)
        opt.bind(be)
        W0 = layer.params["W"].copy()
        _, g = run_backward(layer, x, dy)
        rows = g["W"].rows
        opt.step([("W", layer.params["W"], g["W"])])
        moved = numpy.flatnonzero(numpy.any(layer.params["W"] != W0, axis=1))
        assert_array_equal(moved, rows)
        # next step touches other rows only: the rows of step 1 stay put (lazy momentum)
        W1 = layer.params["W"].copy()
        other = numpy.setdiff1d(numpy.arange(12), rows)[:2]
        opt.step([("W", layer.params["W"], RowSparseGrad(other, numpy.ones((2, 4)), (12, 4)))])
        assert_array_equal(layer.params["W"][rows], W1[rows])


def test_dense_adam_keeps_moving_rows_meprop_skipped(be):
    """sparse_mode="dense": an unselected row with non-zero momentum still moves."""
    x, dy = data(3, 4, 12)
    layer = bound(Linear(4, 12, meprop={"k": 2, "mode": "unified"}), be)
    opt = Adam(1e-2, sparse_mode="dense").bind(be)
    _, g = run_backward(layer, x, dy)
    rows = g["W"].rows
    opt.step([("W", layer.params["W"], g["W"])])
    W1 = layer.params["W"].copy()
    other = numpy.setdiff1d(numpy.arange(12), rows)[:2]
    opt.step([("W", layer.params["W"], RowSparseGrad(other, numpy.ones((2, 4)), (12, 4)))])
    assert numpy.all(numpy.any(layer.params["W"][rows] != W1[rows], axis=1))


def test_lazy_sgd_equals_dense_sgd_on_masked_gradient(be):
    x, dy = data(5, 4, 9)
    sparse = bound(Linear(4, 9, meprop={"k": 3, "mode": "per-example"}), be)
    dense_W = sparse.params["W"].copy()
    _, g = run_backward(sparse, x, dy)
    SGD(0.3).bind(be).step([("W", sparse.params["W"], g["W"])])
    mask = reference_pattern(dy, 3, "per-example")
    SGD(0.3).bind(be).step([("W", dense_W, (dy * mask).T @ x)])
    assert_allclose(sparse.params["W"], dense_W, rtol=1e-13, atol=1e-13)


# -------------------------------------------------------------------- NumPy vs CuPy
def distinct_magnitudes(rng, shape, dtype):
    """Values whose |.| are all distinct (no ties: the devices may break ties differently)."""
    n = int(numpy.prod(shape))
    mags = (rng.permutation(n) + 1.0) / n
    return (mags * rng.choice([-1.0, 1.0], size=n)).reshape(shape).astype(dtype)


@pytest.mark.parametrize("shape,k", [((1, 1), 1), ((3, 7), 7), ((5, 300), 1), ((70, 513), 37),
                                     ((4, 1000), 999), ((2, 8192), 512)])
def test_topk_rows_against_numpy(backend, float_dtype, to_host, shape, k, small_grid):
    rng = numpy.random.default_rng(shape[1])
    a = distinct_magnitudes(rng, shape, float_dtype)
    got = to_host(mp.topk_rows(backend, backend.asarray(a), k))
    ref = numpy.sort(numpy.argsort(-numpy.abs(a.astype(numpy.float64)), axis=1)[:, :k], axis=1)
    assert_array_equal(got, ref)


def test_topk_rows_ties_go_to_the_lowest_index(backend, to_host):
    a = numpy.array([[1.0, -1.0, 1.0, 0.5, 1.0, 2.0], [0, 0, 0, 0, 0, 0], [0, 3, 0, 0, -3, 0]])
    got = to_host(mp.topk_rows(backend, backend.asarray(a), 3))
    assert_array_equal(got, [[0, 1, 5], [0, 1, 2], [0, 1, 4]])


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
@pytest.mark.parametrize("with_numba", [True, False])
def test_topk_rows_heap_equals_a_stable_sort_with_many_ties(be, dtype, with_numba, monkeypatch):
    """Both CPU paths of the selection (the numba pass, and the project's sort without numba)
    against a stable sort written here: ties to the lowest index, NaN above every number."""
    from engine.backend import cpu_loops
    if not with_numba:
        monkeypatch.setattr(cpu_loops, "numba", None)
    rng = numpy.random.default_rng(9)
    a = (rng.integers(-3, 4, size=(50, 40)) * rng.random((1, 40)).round(1)).astype(dtype)
    a[3] = 0
    a[4, 7] = numpy.nan
    key = numpy.where(numpy.isnan(a), numpy.inf, numpy.abs(a.astype(numpy.float64)))
    for k in (1, 5, 39):
        got = mp.topk_rows(be, a, k)
        ref = numpy.sort(numpy.argsort(-key, axis=1, kind="stable")[:, :k], axis=1)
        assert got.dtype == numpy.int64
        assert_array_equal(got, ref)


@pytest.mark.parametrize("mode", MODES)
def test_meprop_backward_against_numpy(backend, float_dtype, to_host, tol, mode):
    rng = numpy.random.default_rng(4)
    B, I, O, k = 33, 17, 70, 9
    x = rng.standard_normal((B, I)).astype(float_dtype)
    dy = distinct_magnitudes(rng, (B, O), float_dtype)
    W = rng.standard_normal((O, I)).astype(float_dtype)
    cfg = {"k": k, "mode": mode, "seed": 3}
    host = Backend()
    g_ref, dx_ref = mp.meprop_backward(host, dy, x, W, cfg, (3, 0, 5, 1, 1))
    g, dx = mp.meprop_backward(backend, backend.asarray(dy), backend.asarray(x),
                               backend.asarray(W), cfg, (3, 0, 5, 1, 1))
    assert_array_equal(to_host(g.rows), g_ref.rows)
    t = dict(rtol=1e-4, atol=1e-4) if float_dtype == numpy.float32 else tol(float_dtype)
    assert_allclose(to_host(g.values), g_ref.values, **t)
    assert_allclose(to_host(dx), dx_ref, **t)


@pytest.mark.parametrize("union_gain", [0, 10 ** 9])      # numba gathers / BLAS over the union
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_per_example_cpu_paths_equal_masked_reference(monkeypatch, union_gain, dtype):
    """Both CPU per-example product paths (chosen by UNION_GAIN) equal the masked reference."""
    from engine.backend import cpu_sparse
    monkeypatch.setattr(cpu_sparse, "UNION_GAIN", union_gain)
    be = Backend()
    rng = numpy.random.default_rng(5)
    B, O, I, k = 9, 23, 7, 4
    dy = rng.standard_normal((B, O)).astype(dtype)
    dy[:, 3] = 0
    x = rng.standard_normal((B, I)).astype(dtype)
    W = rng.standard_normal((O, I)).astype(dtype)
    kind, pattern = mp.select(be, dy, {"k": k, "mode": "per-example", "seed": 0}, (0, 0, 0, 0, 1))
    dW, dx = mp.per_example_backward(be, dy, x, W, pattern)
    rW, rx = mp.masked_reference(be, dy, x, W, kind, pattern)
    tol = 1e-5 if dtype == numpy.float32 else 1e-12
    numpy.testing.assert_allclose(dW.to_dense(be), rW, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(dx, rx, rtol=tol, atol=tol)
    assert dW.unique and numpy.all(numpy.diff(dW.rows) > 0)
