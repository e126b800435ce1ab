"""Multi-label outputs (squared hinge, BCE) over dense or fixed fan-in weights: loss values
against the formulas, float64 finite differences, blockwise evaluation equal to the whole
computation, parameter aliasing for the optimizer and checkpoints, and the XMC classifier."""
import numpy
import pytest
import scipy.sparse

from devices import BACKEND_PARAMS, make_backend, to_host, tolerance
from engine.backend import Backend
from engine.models import MLPClassifier
from engine.outputs import make_output
from engine.outputs.xmc_metrics import inverse_propensity
from gradcheck import check_model_gradients, check_output_gradients

LOSSES = ["squared-hinge", "bce"]
GPU = [pytest.param("cupy", marks=pytest.mark.gpu)]


def bound(out, be=None, dtype=numpy.float64, seed=0):
    return out.bind(be or Backend(), numpy.random.default_rng(seed), dtype)


def data(rng, B=6, d=5, L=11, K=3):
    h = rng.standard_normal((B, d))
    t = numpy.full((B, K), -1, dtype=numpy.int64)
    for b in range(B):
        n = rng.integers(0, K + 1)
        t[b, :n] = rng.choice(L, size=n, replace=False)
    return h, t


def reference_loss(name, s, t):
    y = -numpy.ones_like(s)
    for b, row in enumerate(t):
        for l in row:
            if l >= 0:
                y[b, l] = 1.0
    if name == "squared-hinge":
        per = numpy.maximum(0.0, 1.0 - y * s) ** 2
    else:
        per = numpy.logaddexp(0.0, -y * s)
    return per.sum(axis=1)


def full_scores(out, h):
    return h @ out.params["W"].T + out.params["b"]


@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_formula(name):
    rng = numpy.random.default_rng(0)
    out = bound(make_output(name, 5, 11))
    out.params["W"][...] = rng.standard_normal((11, 5))
    out.params["b"][...] = rng.standard_normal(11)
    h, t = data(rng)
    ref = reference_loss(name, full_scores(out, h), t)
    assert float(out.forward(h, t, train=False)) == pytest.approx(ref.mean(), rel=1e-12)
    numpy.testing.assert_allclose(out.loss_per_example(h, t), ref, rtol=1e-12)
    # (B,) targets: one label per row
    t1 = t[:, 0].copy()
    t1[t1 < 0] = 3
    assert float(out.forward(h, t1, train=False)) == pytest.approx(
        reference_loss(name, full_scores(out, h), t1[:, None]).mean(), rel=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_finite_differences(name):
    rng = numpy.random.default_rng(1)
    out = bound(make_output(name, 5, 11))
    out.params["W"][...] = rng.standard_normal((11, 5)) * 0.5
    h, t = data(rng)
    check_output_gradients(out, h, t)


def test_squared_hinge_gradient_is_exactly_zero_where_satisfied():
    out = bound(make_output("squared-hinge", 2, 3, bias=False))
    out.params["W"][...] = [[10.0, 0.0], [-10.0, 0.0], [0.0, 0.0]]
    h = numpy.array([[1.0, 0.0]])
    out.forward(h, numpy.array([[0, -1]]), train=True)
    g = out._cache
    assert g[0, 0] == 0.0 and g[0, 1] == 0.0 and g[0, 2] != 0.0     # s=10 pos, s=-10 neg: zero


def test_bce_is_finite_for_huge_scores():
    out = bound(make_output("bce", 1, 2, bias=False), dtype=numpy.float32)
    out.params["W"][...] = [[1000.0], [-1000.0]]
    h = numpy.ones((1, 1), dtype=numpy.float32)
    loss = out.forward(h, numpy.array([[1]]), train=True)    # both labels badly wrong
    assert numpy.isfinite(float(loss)) and float(loss) == pytest.approx(2000.0, rel=1e-6)
    dh = out.backward()
    assert numpy.all(numpy.isfinite(dh))
    numpy.testing.assert_allclose(out.grads["W"].ravel(), [1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_blockwise_eval_equals_whole(name):
    rng = numpy.random.default_rng(2)
    whole = bound(make_output(name, 5, 11))
    tiny = bound(make_output(name, 5, 11, eval_block_elems=4))      # 1-column blocks
    tiny.load_state_dict(whole.state_dict())
    whole.set_label_frequencies(rng.integers(0, 9, size=11), 50)
    tiny.set_label_frequencies(whole.label_counts, 50)
    h, t = data(rng, B=9)
    a, b = whole.eval_sums(h, t), tiny.eval_sums(h, t)
    assert set(a) == set(b) and {"count", "loss", "p@1", "ndcg@5", "psp@3", "psp_best@3"} <= set(a)
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-12, abs=1e-12), k
    assert float(a["loss"]) == pytest.approx(reference_loss(name, full_scores(whole, h), t).sum())
    ids, vals = tiny.predict_topk(h, 4)
    s = full_scores(whole, h)
    numpy.testing.assert_array_equal(ids, numpy.argsort(-s, axis=1, kind="stable")[:, :4])
    numpy.testing.assert_allclose(vals, numpy.take_along_axis(s, ids, axis=1))
    m = whole.eval_finish({k: float(v) for k, v in a.items()})
    assert 0 <= m["psp@3"] <= 1 and m["loss"] == pytest.approx(float(a["loss"]) / 9)


def test_params_alias_the_inner_layer_and_state_round_trip():
    out = bound(make_output("squared-hinge", 4, 6, label_counts=[1, 2, 3, 0, 0, 5], num_train=9))
    assert out.params is out.inner.params and set(out.params) == {"W", "b"}
    out.forward(numpy.ones((2, 4)), numpy.array([[1, 2], [0, -1]]))
    out.backward()
    assert out.grads is out.inner.grads and set(out.grads) == {"W", "b"}
    out.zero_grads()
    assert out.grads == {}
    state = out.state_dict()
    assert set(state) == {"W", "b", "label_counts", "num_train"}
    other = bound(make_output("squared-hinge", 4, 6), seed=5)
    other.load_state_dict(state)
    numpy.testing.assert_array_equal(other.params["W"], out.params["W"])
    numpy.testing.assert_allclose(to_host(other._inv_prop),
                                  inverse_propensity([1, 2, 3, 0, 0, 5], 9))
    report = out.memory_report("adam", batch=3)
    assert report["weights"] == 6 * 4 * 8 and report["grads"] == (6 * 4 + 6) * 8
    assert report["optimizer"] == 2 * report["grads"] and report["activations"] == 3 * (8 + 12) * 8
    assert report["total"] == sum(v for k, v in report.items() if k != "total")


def test_bad_arguments():
    with pytest.raises(ValueError, match="fan_in"):
        make_output("bce", 4, 6, weights="ffi")
    with pytest.raises(ValueError, match="'dense' or 'ffi'"):
        make_output("bce", 4, 6, weights="sparse")
    with pytest.raises(ValueError, match="ffi"):
        make_output("bce", 4, 6, rewire_every=10)
    with pytest.raises(ValueError, match="unknown"):
        make_output("bce", 4, 6, colour="red")
    out = bound(make_output("bce", 4, 6))
    with pytest.raises(ValueError, match="outside"):
        out.forward(numpy.ones((1, 4)), numpy.array([[6]]))
    with pytest.raises(ValueError, match="label counts"):
        out.set_label_frequencies([1, 2], 3)


def sparse_batch(rng, B, F, density=0.3):
    x = scipy.sparse.random(B, F, density=density, format="csr", random_state=rng)
    x.data[:] = rng.uniform(0.5, 1.5, size=x.data.shape)
    return x


@pytest.mark.parametrize("name", LOSSES)
def test_xmc_classifier_model_gradients(name):
    rng = numpy.random.default_rng(3)
    model = MLPClassifier(20, 9, hidden=[6], sparse_input=True, intermediate=7, output=name)
    model.bind(Backend(), seed=0, dtype="float64")
    x = sparse_batch(rng, 5, 20)
    _, t = data(rng, B=5, L=9)
    check_model_gradients(model, x, t)
    sums = model.eval_sums(x, t)
    assert {"count", "loss", "p@1", "p@3", "p@5", "ndcg@1"} <= set(sums)


def reference_score_grad(name, s, t):
    """d(per-label loss)/ds (B, L) from the definitions: squared hinge -2 y max(0, 1 - y s),
    BCE -y sigmoid(-y s); y = +1 on the (deduplicated) targets, -1 elsewhere."""
    y = -numpy.ones_like(s)
    for b, row in enumerate(t):
        y[b, row[row >= 0]] = 1.0
    if name == "squared-hinge":
        return -2.0 * y * numpy.maximum(0.0, 1.0 - y * s)
    return -y / (1.0 + numpy.exp(y * s))


def reference_p_at_k(s, t, k):
    """Sum over rows of |top-k scores that are targets| / k."""
    top = numpy.argsort(-s, axis=1, kind="stable")[:, :k]
    return sum(len(set(row) & set(t_row[t_row >= 0])) for row, t_row in zip(top, t)) / k


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradients_and_p_at_k_against_the_formulas(backend_name, name):
    """Blockwise scoring (eval_block_elems smaller than B x L) on each backend against float64
    formulas written here from the dense scores h W^T + b."""
    be = make_backend(backend_name)
    rng = numpy.random.default_rng(4)
    out = bound(make_output(name, 5, 300, eval_block_elems=1000), be)
    W, b = rng.standard_normal((300, 5)) * 0.5, rng.standard_normal(300) * 0.5
    out.params["W"][...] = be.asarray(W)
    out.params["b"][...] = be.asarray(b)
    h, t = data(rng, B=17, L=300, K=4)
    t[0, 1] = t[0, 0]                                # a repeated label is one positive
    s = h @ W.T + b
    tol = tolerance("float64")
    assert float(to_host(out.forward(be.asarray(h), be.asarray(t)))) == pytest.approx(
        reference_loss(name, s, t).mean(), rel=1e-11)
    G = reference_score_grad(name, s, t) / h.shape[0]
    numpy.testing.assert_allclose(to_host(out.backward()), G @ W, **tol)
    numpy.testing.assert_allclose(to_host(out.grads["W"]), G.T @ h, **tol)
    numpy.testing.assert_allclose(to_host(out.grads["b"]), G.sum(axis=0), **tol)
    sums = out.eval_sums(be.asarray(h), be.asarray(t))
    assert float(to_host(sums["loss"])) == pytest.approx(reference_loss(name, s, t).sum(), rel=1e-11)
    for k in (1, 3, 5):
        assert float(to_host(sums[f"p@{k}"])) == pytest.approx(reference_p_at_k(s, t, k), rel=1e-12)


@pytest.mark.parametrize("backend_name", GPU)     # NumPy against itself would prove nothing
@pytest.mark.parametrize("name", LOSSES)
def test_backend_matches_numpy(backend_name, name):
    be = make_backend(backend_name)
    rng = numpy.random.default_rng(4)
    ref = bound(make_output(name, 5, 300, label_counts=rng.integers(0, 20, 300), num_train=100))
    out = bound(make_output(name, 5, 300, eval_block_elems=1000), be)
    out.load_state_dict(ref.state_dict())
    h, t = data(rng, B=17, L=300, K=4)
    tol = tolerance("float64")
    assert float(to_host(out.forward(be.asarray(h), be.asarray(t)))) == pytest.approx(
        float(ref.forward(h, t)), rel=1e-11)
    numpy.testing.assert_allclose(to_host(out.backward()), ref.backward(), **tol)
    for k in ("W", "b"):
        numpy.testing.assert_allclose(to_host(out.grads[k]), ref.grads[k], **tol)
    a, b = out.eval_sums(be.asarray(h), be.asarray(t)), ref.eval_sums(h, t)
    for k in b:
        assert float(to_host(a[k])) == pytest.approx(float(b[k]), rel=1e-11), k


# ------------------------------------------------------------------ fixed fan-in weights
@pytest.mark.parametrize("name", LOSSES)
def test_ffi_output_finite_differences_and_state(name):
    rng = numpy.random.default_rng(5)
    out = bound(make_output(name, 8, 13, weights="ffi", fan_in=3))
    assert out.params is out.inner.params and "indices" not in out.params
    h, t = data(rng, B=6, d=8, L=13)
    check_output_gradients(out, h, t)
    state = out.state_dict()
    assert "indices" in state and state["indices"].shape == (13, 3)
    other = bound(make_output(name, 8, 13, weights="ffi", fan_in=3, seed=9))
    other.load_state_dict(state)
    assert float(other.forward(h, t, train=False)) == float(out.forward(h, t, train=False))
    a, b = out.eval_sums(h, t), bound(make_output(name, 8, 13, weights="ffi", fan_in=3,
                                                  eval_block_elems=13)).eval_sums(h, t)
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-12), k
    r = out.memory_report("adam")
    assert r["weights"] == 13 * 3 * 8 and r["indices"] == 13 * 3 * 4 and r["optimizer"] > 0


def test_ffi_full_fan_in_equals_dense_output():
    rng = numpy.random.default_rng(6)
    d, L = 4, 7
    ffi = bound(make_output("squared-hinge", d, L, weights="ffi", fan_in=d))
    dense = bound(make_output("squared-hinge", d, L))
    W = numpy.zeros((L, d))
    idx = numpy.asarray(ffi.inner.indices)
    numpy.put_along_axis(W, idx.astype(numpy.int64), ffi.params["weights"], axis=1)
    dense.params["W"][...] = W
    dense.params["b"][...] = ffi.params["bias"]
    h, t = data(rng, B=5, d=d, L=L)
    assert float(ffi.forward(h, t)) == pytest.approx(float(dense.forward(h, t)), rel=1e-12)
    numpy.testing.assert_allclose(ffi.backward(), dense.backward(), rtol=1e-10, atol=1e-12)


def test_ffi_output_rewires_through_the_engine_and_checkpoints(tmp_path):
    from engine import Engine
    from engine.optim import make_optimizer
    rng = numpy.random.default_rng(7)
    model = MLPClassifier(30, 12, hidden=[10], sparse_input=True, output="squared-hinge",
                          output_kwargs={"weights": "ffi", "fan_in": 4, "rewire_every": 2,
                                         "rewire_fraction": 0.25})
    engine = Engine(model, make_optimizer("adam", lr=1e-2), device="cpu", dtype="float64",
                    verbose=False)
    before = numpy.array(model.output.inner.indices)
    for _ in range(4):
        x = sparse_batch(rng, 6, 30)
        _, t = data(rng, B=6, L=12)
        engine.train_step(x, t)
    after = numpy.asarray(model.output.inner.indices)
    assert not numpy.array_equal(before, after)                       # rewired at steps 2, 4
    assert all(len(set(row)) == 4 for row in after.tolist())          # fan-in kept, no duplicates
    key = f"{len(model.layers) - 1}.SquaredHingeOutput.weights"
    assert key in engine.optimizer.state["m"]                          # keys line up with rewiring
    path = tmp_path / "ck.h5"
    engine.save_checkpoint(path)
    again = Engine.from_checkpoint(path, device="cpu", verbose=False)
    numpy.testing.assert_array_equal(again.model.output.inner.indices, after)
    x = sparse_batch(rng, 5, 30)
    ids_a, s_a = again.model.predict_topk(x, 3)
    ids_b, s_b = model.predict_topk(x, 3)
    numpy.testing.assert_array_equal(ids_a, ids_b)
    numpy.testing.assert_allclose(s_a, s_b, rtol=1e-12)


def test_label_counts_from_an_xmc_description_or_a_checkpoint_state(tmp_path):
    """The counts come as arrays (a DatasetInfo's), never as a path; a layer rebuilt without
    them (a checkpoint's config) gets them back from the checkpoint's state."""
    from engine.data.registry import describe
    from engine.data.xmc import prepare_xmc
    tr, te = tmp_path / "tr.txt", tmp_path / "te.txt"
    tr.write_text("4 3 5\n0,4 0:1\n4 1:1\n 2:1\n1,4 0:1\n")
    te.write_text("1 3 5\n2 1:1\n")
    path = str(tmp_path / "d.h5")
    prepare_xmc(str(tr), str(te), path, valid_fraction=0.0)
    info = describe(path)
    out = bound(make_output("bce", 4, 5, label_counts=info.label_counts, num_train=info.num_train))
    numpy.testing.assert_array_equal(out.label_counts, [1, 1, 0, 0, 3])
    assert out.num_train == 4 and "label_counts" not in out.config()
    with pytest.raises(ValueError, match="must be an array"):
        make_output("bce", 4, 5, label_counts=path)
    moved = make_output("bce", 4, 5, **{k: v for k, v in out.config().items()
                                        if k not in ("in_features", "num_classes")})
    assert moved.label_counts is None
    bound(moved).load_state_dict(out.state_dict())          # a checkpoint's state restores them
    numpy.testing.assert_array_equal(moved.label_counts, out.label_counts)
    assert "psp@1" in moved.eval_sums(numpy.ones((1, 4)), numpy.array([[2]]))


@pytest.mark.parametrize("backend_name", GPU)     # NumPy against itself would prove nothing
@pytest.mark.parametrize("weights", ["dense", "ffi"])
def test_classifier_training_steps_match_numpy(backend_name, weights):
    """Sparse input (cuSPARSE on the GPU) -> intermediate -> multi-label output: three Adam
    steps on the backend equal the NumPy reference in float64."""
    be = make_backend(backend_name)
    from engine.layers.sparse_linear import to_backend_csr
    from engine.optim import make_optimizer
    kw = {"weights": "ffi", "fan_in": 5, "rewire_every": 2} if weights == "ffi" else {}

    def make():
        return MLPClassifier(40, 300, hidden=[16], sparse_input=True, intermediate=12,
                             output="squared-hinge", output_kwargs=dict(kw))
    rng = numpy.random.default_rng(8)
    batches = [(sparse_batch(rng, 7, 40), data(rng, B=7, L=300)[1]) for _ in range(3)]
    results = []
    for backend in (Backend(), be):
        model = make().bind(backend, seed=0, dtype="float64")
        opt = make_optimizer("adam", lr=1e-2).bind(backend)
        for step, (x, t) in enumerate(batches, start=1):
            model.forward(to_backend_csr(backend, x), backend.asarray(t))
            model.backward()
            opt.step([(key, layer.params[name], layer.grads.get(name))
                      for key, layer, name in model.param_items()])
            for layer in model.layers:
                layer.zero_grads()
            model.after_step(step, opt)
        results.append({k: to_host(v) for k, v in model.state_dict().items()})
    ref, got = results
    for key in ref:
        numpy.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", LOSSES)
def test_eval_loss_counts_a_repeated_label_once_like_training(name):
    """A label named twice in one row is one positive, in training and in evaluation alike."""
    rng = numpy.random.default_rng(7)
    out = bound(make_output(name, 5, 11, eval_block_elems=8))
    h = rng.standard_normal((4, 5))
    t = numpy.array([[3, 3, -1], [0, 10, 0], [-1, -1, -1], [7, 2, 7]])
    train_mean = float(out.forward(h, t, train=False))
    assert float(out.eval_sums(h, t)["loss"]) == pytest.approx(4 * train_mean, rel=1e-12)
    dedup = numpy.array([[3, -1, -1], [0, 10, -1], [-1, -1, -1], [7, 2, -1]])
    assert float(out.eval_sums(h, dedup)["loss"]) == pytest.approx(4 * train_mean, rel=1e-12)


# ------------------------------------------------------------------ initial label biases
COUNTS, N_TRAIN = numpy.array([0, 1, 7, 50, 99]), 100


def smoothed(counts=COUNTS, n=N_TRAIN):
    return (counts + 0.5) / (n + 1.0)


@pytest.mark.parametrize("weights", ["dense", "ffi"])
def test_bce_starts_at_the_log_odds_of_each_labels_frequency(weights):
    """BCE's default bias is logit of the smoothed training frequency (N_l + 1/2) / (N + 1), the
    constant score of least expected loss: sigmoid(b_l) equals that frequency. The weights are
    the same draw whatever the bias rule."""
    kw = {"weights": "ffi", "fan_in": 2} if weights == "ffi" else {}
    name = "bias" if weights == "ffi" else "b"
    out = bound(make_output("bce", 3, 5, label_counts=COUNTS, num_train=N_TRAIN, **kw))
    assert out.bias_init == "prior" and out.config()["bias_init"] == "prior"
    p = smoothed()
    numpy.testing.assert_allclose(out.params[name], numpy.log(p / (1 - p)), rtol=1e-13)
    numpy.testing.assert_allclose(1.0 / (1.0 + numpy.exp(-out.params[name])), p, rtol=1e-12)
    zero = bound(make_output("bce", 3, 5, label_counts=COUNTS, num_train=N_TRAIN,
                             bias_init="zero", **kw))
    assert numpy.all(zero.params[name] == 0.0)
    for k in out.params:
        if k != name:
            numpy.testing.assert_array_equal(out.params[k], zero.params[k])


def test_prior_bias_without_counts_and_for_the_squared_hinge():
    """No label counts: the prior is 1 / L (one positive per example). The squared hinge keeps
    zero biases by default; its "prior" is argmin_b p (1-b)^2 + (1-p) (1+b)^2 = 2p - 1."""
    out = bound(make_output("bce", 3, 8))
    numpy.testing.assert_allclose(out.params["b"], numpy.full(8, -numpy.log(7.0)), rtol=1e-13)
    hinge = bound(make_output("squared-hinge", 3, 5, label_counts=COUNTS, num_train=N_TRAIN))
    assert hinge.bias_init == "zero" and numpy.all(hinge.params["b"] == 0.0)
    hinge = bound(make_output("squared-hinge", 3, 5, label_counts=COUNTS, num_train=N_TRAIN,
                              bias_init="prior"))
    numpy.testing.assert_allclose(hinge.params["b"], 2 * smoothed() - 1, rtol=1e-13)
    grid = numpy.linspace(-1.5, 1.5, 30001)
    for p, b in zip(smoothed(), hinge.params["b"]):
        expected = p * numpy.maximum(0, 1 - grid) ** 2 + (1 - p) * numpy.maximum(0, 1 + grid) ** 2
        assert abs(grid[numpy.argmin(expected)] - b) <= 1e-4
    assert "b" not in bound(make_output("bce", 3, 5, bias=False)).params
    with pytest.raises(ValueError, match="bias_init"):
        make_output("bce", 3, 5, bias_init="log")


def test_bce_with_the_prior_bias_matches_finite_differences_and_pytorch():
    """float64: the default BCE (prior biases) against central differences, and its loss and
    gradients against torch's binary_cross_entropy_with_logits summed over labels, averaged
    over examples."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(11)
    L, d = 40, 6
    counts = rng.integers(0, 30, size=L)
    out = bound(make_output("bce", d, L, label_counts=counts, num_train=60))
    assert numpy.all(out.params["b"] < 0)
    h, t = data(rng, B=9, d=d, L=L, K=4)
    check_output_gradients(out, h, t)
    loss = float(out.forward(h, t))
    dh = out.backward()
    W = torch.tensor(out.params["W"], requires_grad=True)
    b = torch.tensor(out.params["b"], requires_grad=True)
    ht = torch.tensor(h, requires_grad=True)
    y = torch.zeros((9, L), dtype=torch.float64)
    for r, row in enumerate(t):
        y[r, row[row >= 0]] = 1.0
    ref = torch.nn.functional.binary_cross_entropy_with_logits(ht @ W.T + b, y,
                                                               reduction="sum") / 9
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    numpy.testing.assert_allclose(dh, ht.grad.numpy(), rtol=1e-12, atol=1e-15)
    numpy.testing.assert_allclose(out.grads["W"], W.grad.numpy(), rtol=1e-12, atol=1e-15)
    numpy.testing.assert_allclose(out.grads["b"], b.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_bce_default_learns_at_least_as_fast_as_the_squared_hinge(tmp_path):
    """A small synthetic XMC set (500 labels, power-law frequencies), sparse input -> 64 ReLU,
    Adam 1e-2, batch 128, 5 epochs of 24 steps, the same seed and data order for each loss.
    Floor: P@1 of predicting the most frequent training label for every test point. The squared
    hinge must climb above it (the set is learnable in this budget), BCE with its default
    (prior biases) must gain at least 90% of the hinge's gain over the floor, and BCE with the
    former zero biases stays behind the default (what the default is for)."""
    from engine import Engine
    from engine.data.registry import describe
    from engine.data.xmc import prepare_xmc, read_split
    from engine.data.xmc_synthetic import write_synthetic_xmc
    from engine.models.build import build_model_for
    from engine.optim import make_optimizer
    tr, te, path = tmp_path / "tr.txt", tmp_path / "te.txt", str(tmp_path / "s.h5")
    write_synthetic_xmc(tr, te, 3000, 1000, num_features=1000, num_labels=500,
                        labels_per_point=5, features_per_point=30, seed=0)
    prepare_xmc(str(tr), str(te), path, valid_fraction=0.0)
    info = describe(path)
    _, yp, yi = read_split(path, "test")
    head = int(numpy.argmax(info.label_counts))
    floor = numpy.mean([head in yi[yp[r]:yp[r + 1]] for r in range(yp.shape[0] - 1)])

    def p_at_1(output, **kw):
        model = build_model_for(info, {"hidden": [64], "output": output, "output_kwargs": kw})
        engine = Engine(model, make_optimizer("adam", lr=1e-2), device="cpu", seed=0,
                        verbose=False)
        engine.train(path, epochs=5, batch_size=128, valid=None, progress=False)
        return engine.evaluate(path, split="test")["p@1"]

    hinge, bce, bce_zero = p_at_1("squared-hinge"), p_at_1("bce"), p_at_1("bce", bias_init="zero")
    assert hinge > floor + 0.1, (floor, hinge)
    assert bce - floor >= 0.9 * (hinge - floor), (floor, hinge, bce)
    assert bce_zero < bce, (bce_zero, bce)
