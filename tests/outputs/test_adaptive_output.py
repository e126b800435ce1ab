"""Adaptive softmax output: exactness with one cluster, finite differences, log_prob, predict,
ignore_index, reductions, PyTorch equivalence, NumPy vs CuPy."""
import numpy
import pytest

from devices import make_backend, to_host
from engine.backend import Backend
from engine.outputs import AdaptiveSoftmaxOutput, SoftmaxOutput, make_output
from gradcheck import check_output_gradients


def make(D=40, d=16, cutoffs=(5, 15), seed=0, dtype=numpy.float64, backend=None, **kw):
    out = AdaptiveSoftmaxOutput(d, D, cutoffs=list(cutoffs), **kw)
    out.bind(backend or Backend(), numpy.random.default_rng(seed), dtype)
    rng = numpy.random.default_rng(seed + 7)
    for name, p in out.params.items():        # non-zero biases, so their gradients are checked
        if name.endswith("_b"):
            p[...] = out.backend.asarray(rng.standard_normal(p.shape).astype(dtype))
    return out


def full_log_softmax_reference(out, h):
    """log p over the whole vocabulary from the definition, in float64 on the host."""
    P = {k: to_host(v).astype(numpy.float64) for k, v in out.params.items()}
    h = to_host(h).astype(numpy.float64)

    def lsm(z):
        z = z - z.max(1, keepdims=True)
        return z - numpy.log(numpy.exp(z).sum(1, keepdims=True))
    head = lsm(h @ P["head_W"].T + P.get("head_b", 0))
    cols = [head[:, :out.shortlist]]
    for i in range(out.n_clusters):
        z = (h @ P[f"proj{i}_W"].T) @ P[f"out{i}_W"].T + P.get(f"out{i}_b", 0)
        cols.append(lsm(z) + head[:, out.shortlist + i:out.shortlist + i + 1])
    return numpy.concatenate(cols, axis=1)


def data(B=12, d=16, D=40, seed=1, cover=(0, 7, 20)):
    rng = numpy.random.default_rng(seed)
    h = rng.standard_normal((B, d))
    t = rng.integers(0, D, B)
    t[:len(cover)] = cover                     # every cluster is hit
    return h, t


def test_one_cluster_equals_exact_softmax_over_steps():
    D, d, B = 30, 8, 10
    ada = make(D, d, cutoffs=())
    soft = SoftmaxOutput(d, D, bias=True)
    soft.bind(Backend(), numpy.random.default_rng(0), numpy.float64)
    soft.params["W"][...] = ada.params["head_W"]
    soft.params["b"][...] = ada.params["head_b"]
    rng = numpy.random.default_rng(3)
    for step in range(6):
        h = rng.standard_normal((B, d))
        t = rng.integers(0, D, B)
        t[step % B] = -1
        la, ls = float(ada.forward(h, t)), float(soft.forward(h, t))
        dha, dhs = ada.backward(), soft.backward()
        assert abs(la - ls) <= 1e-13 * abs(ls)
        numpy.testing.assert_allclose(dha, dhs, rtol=1e-12, atol=1e-14)
        numpy.testing.assert_allclose(ada.grads["head_W"], soft.grads["W"], rtol=1e-12, atol=1e-14)
        numpy.testing.assert_allclose(ada.grads["head_b"], soft.grads["b"], rtol=1e-12, atol=1e-14)
        for (pa, ga), (ps, gs) in zip([(ada.params["head_W"], ada.grads["head_W"]),
                                       (ada.params["head_b"], ada.grads["head_b"])],
                                      [(soft.params["W"], soft.grads["W"]),
                                       (soft.params["b"], soft.grads["b"])]):
            pa -= 0.5 * ga
            ps -= 0.5 * gs
        numpy.testing.assert_array_equal(ada.params["head_W"], soft.params["W"])


@pytest.mark.parametrize("tail_bias", [False, True])
@pytest.mark.parametrize("head_bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_finite_differences(tail_bias, head_bias, reduction):
    out = make(tail_bias=tail_bias, head_bias=head_bias, reduction=reduction, div_value=2.0)
    h, t = data()
    t[5] = -1
    check_output_gradients(out, h, t, trials=4)


def test_finite_differences_reduction_none_with_weights():
    out = make(reduction="none", tail_bias=True)
    h, t = data()
    w = numpy.random.default_rng(5).standard_normal(h.shape[0])
    out.forward(h, t)
    dh = out.backward(w)
    grads = dict(out.grads)
    eps = 1e-6
    rng = numpy.random.default_rng(6)
    for name, p in list(out.params.items()) + [("h", h)]:
        d_ = rng.standard_normal(p.shape)
        p += eps * d_
        fp = float((out.forward(h, t, train=False) * w).sum())
        p -= 2 * eps * d_
        fm = float((out.forward(h, t, train=False) * w).sum())
        p += eps * d_
        g = dh if name == "h" else grads[name]
        assert abs((fp - fm) / (2 * eps) - (g * d_).sum()) < 1e-6 * max(1, abs((g * d_).sum())), name


def test_loss_and_log_prob_match_definition():
    out = make(tail_bias=True)
    h, t = data()
    t[3] = -1
    ref = full_log_softmax_reference(out, h)
    lp_ref = numpy.where(t >= 0, ref[numpy.arange(len(t)), numpy.maximum(t, 0)], 0)
    numpy.testing.assert_allclose(out.log_prob(h, t), lp_ref, rtol=1e-12, atol=1e-13)
    assert abs(float(out.forward(h, t, train=False)) + lp_ref.sum() / (t >= 0).sum()) < 1e-12
    assert out.forward(h, t, train=False).shape == ()
    out_sum = make(tail_bias=True, reduction="sum")
    assert abs(float(out_sum.forward(h, t, train=False)) + lp_ref.sum()) < 1e-11
    out_none = make(tail_bias=True, reduction="none")
    numpy.testing.assert_allclose(out_none.forward(h, t, train=False), -lp_ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("chunk", [None, 3, 7])
def test_log_softmax_rows_sum_to_one(chunk):
    out = make(D=50, cutoffs=(4, 11, 30), tail_bias=True)
    h, _ = data(D=50)
    ref = full_log_softmax_reference(out, h)
    whole = out.log_softmax(h, chunk_size=chunk)
    numpy.testing.assert_allclose(whole, ref, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(numpy.exp(whole).sum(1), 1.0, rtol=1e-12)
    parts = numpy.concatenate([b for _, _, b in out.iter_log_softmax(h, chunk_size=chunk or 9)], 1)
    numpy.testing.assert_allclose(parts, ref, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(out.log_softmax(h, 9, 33, chunk_size=chunk), ref[:, 9:33],
                                  rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_predict_topk_is_exact(k):
    out = make(D=50, cutoffs=(4, 11, 30), init_scale=1.5)
    rng = numpy.random.default_rng(9)
    h = rng.standard_normal((40, 16)) * 2
    ref = full_log_softmax_reference(out, h)
    ids, vals = out.predict_topk(h, k)
    expect = numpy.argsort(-ref, axis=1, kind="stable")[:, :k]
    numpy.testing.assert_allclose(vals, numpy.take_along_axis(ref, expect, 1), rtol=1e-11)
    numpy.testing.assert_allclose(numpy.take_along_axis(ref, ids, 1), vals, rtol=1e-11)
    if k == 1:
        numpy.testing.assert_array_equal(out.predict(h), ref.argmax(1))
        # the shortcut is taken by some rows and not by others in this draw
        head_arg = (h @ out.params["head_W"].T + out.params["head_b"]).argmax(1)
        assert (head_arg < out.shortlist).any() and (head_arg >= out.shortlist).any()


def test_ignore_index_rows_contribute_nothing():
    out = make(ignore_index=3)
    h, t = data()
    t[[4, 6]] = 3
    t[7] = -1
    loss = float(out.forward(h, t))
    dh = out.backward()
    assert numpy.all(dh[[4, 6, 7]] == 0)
    keep = numpy.setdiff1d(numpy.arange(len(t)), [4, 6, 7])
    ref = make(ignore_index=3)
    loss2 = float(ref.forward(h[keep], t[keep]))
    ref.backward()
    assert abs(loss - loss2) < 1e-12
    for name in out.grads:
        numpy.testing.assert_allclose(out.grads[name], ref.grads[name], rtol=1e-11, atol=1e-14)
    assert out.log_prob(h, t)[4] == 0


def test_idle_tail_has_no_gradient_entry():
    out = make()
    h, t = data(cover=())
    t[:] = numpy.arange(len(t)) % 5          # head words only
    out.forward(h, t)
    out.backward()
    assert set(out.grads) == {"head_W", "head_b"}


def test_config_round_trip_and_errors():
    out = make(D=40, cutoffs=(5, 15), div_value=2.0, tail_bias=True)
    again = make_output("adaptive", **out.config())
    assert again.config() == out.config()
    assert out.tail_dims == [8, 4] and out.tail_sizes == [10, 25] and out.head_size == 7
    with pytest.raises(ValueError, match="cutoffs"):
        AdaptiveSoftmaxOutput(8, 40, cutoffs=[5, 5])
    with pytest.raises(ValueError, match="cutoffs"):
        AdaptiveSoftmaxOutput(8, 40, cutoffs=[5, 40])
    with pytest.raises(ValueError, match="counts"):
        AdaptiveSoftmaxOutput(8, 40, cutoffs="auto").bind(Backend(), numpy.random.default_rng(0), "float32")
    with pytest.raises(ValueError, match="h"):
        out.forward(numpy.zeros((3, 5)), numpy.zeros(3, int))
    assert AdaptiveSoftmaxOutput(8, 40, cutoffs="5,15").cutoffs == [5, 15]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        out.forward(numpy.zeros((2, 16)), numpy.array([3, 40]))


def test_same_as_torch_adaptive_log_softmax():
    torch = pytest.importorskip("torch")
    D, d, B = 60, 64, 32           # tail widths 16, 4, 1 (PyTorch would give width 0 below 1)
    cut = [6, 20, 41]
    out = make(D, d, cut, head_bias=True, dtype=numpy.float64)
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(d, D, cut, div_value=4.0, head_bias=True).double()
    with torch.no_grad():
        ref.head.weight.copy_(torch.from_numpy(out.params["head_W"]))
        ref.head.bias.copy_(torch.from_numpy(out.params["head_b"]))
        for i in range(len(cut)):
            ref.tail[i][0].weight.copy_(torch.from_numpy(out.params[f"proj{i}_W"]))
            ref.tail[i][1].weight.copy_(torch.from_numpy(out.params[f"out{i}_W"]))
    rng = numpy.random.default_rng(2)
    h = rng.standard_normal((B, d))
    t = rng.integers(0, D, B)
    t[:4] = [0, 10, 30, 50]
    th = torch.from_numpy(h).requires_grad_(True)
    res = ref(th, torch.from_numpy(t))
    res.loss.backward()
    loss = float(out.forward(h, t))
    dh = out.backward()
    assert abs(loss - float(res.loss.detach())) < 1e-12
    numpy.testing.assert_allclose(dh, th.grad.numpy(), rtol=1e-10, atol=1e-13)
    numpy.testing.assert_allclose(out.log_prob(h, t), res.output.detach().numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(out.log_softmax(h), ref.log_prob(th).detach().numpy(),
                                  rtol=1e-12, atol=1e-12)
    numpy.testing.assert_array_equal(out.predict(h), ref.predict(th).numpy())
    grads = {"head_W": ref.head.weight.grad, "head_b": ref.head.bias.grad}
    for i in range(len(cut)):
        grads[f"proj{i}_W"] = ref.tail[i][0].weight.grad
        grads[f"out{i}_W"] = ref.tail[i][1].weight.grad
    for name, g in grads.items():
        numpy.testing.assert_allclose(out.grads[name], g.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_numpy_vs_cupy(dtype):
    cp_backend = make_backend("cupy")
    D, d, B = 300, 32, 64
    cut = (20, 90)
    cpu = make(D, d, cut, dtype=dtype, tail_bias=True)
    gpu = make(D, d, cut, dtype=dtype, tail_bias=True, backend=cp_backend)
    rng = numpy.random.default_rng(4)
    h = rng.standard_normal((B, d)).astype(dtype)
    t = rng.integers(0, D, B)
    t[:3] = [0, 50, 200]
    t[5] = -1
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == numpy.float32 else dict(rtol=1e-10, atol=1e-12)
    for step in range(3):
        lc = float(cpu.forward(h, t))
        lg = float(to_host(gpu.forward(cp_backend.asarray(h), cp_backend.asarray(t))))
        assert abs(lc - lg) <= tol["rtol"] * abs(lc)
        numpy.testing.assert_allclose(to_host(gpu.backward()), cpu.backward(), **tol)
        assert set(gpu.grads) == set(cpu.grads)
        for name in cpu.grads:
            numpy.testing.assert_allclose(to_host(gpu.grads[name]), cpu.grads[name], **tol)
            cpu.params[name] -= 0.1 * cpu.grads[name]
            gpu.params[name] -= 0.1 * gpu.grads[name]
    hg, tg = cp_backend.asarray(h), cp_backend.asarray(t)
    numpy.testing.assert_allclose(to_host(gpu.log_prob(hg, tg)), cpu.log_prob(h, t), **tol)
    numpy.testing.assert_allclose(to_host(gpu.log_softmax(hg, chunk_size=50)),
                                  cpu.log_softmax(h, chunk_size=50), **tol)
    numpy.testing.assert_array_equal(to_host(gpu.predict(hg)), cpu.predict(h))


def test_backward_needs_a_fresh_training_forward():
    # before any forward, after a backward, and after forward(train=False): no cached batch to use
    out = make()
    h, t = data()
    with pytest.raises(RuntimeError, match="without a forward"):
        out.backward()
    out.forward(h, t)
    out.backward()
    with pytest.raises(RuntimeError, match="without a forward"):
        out.backward()
    out.forward(h, t, train=False)
    with pytest.raises(RuntimeError, match="without a forward"):
        out.backward()


def test_log_prob_with_an_empty_tail_before_a_busy_one():
    # no row in tail 0 (words 5..14), rows in tail 1: the later tail must still be computed
    out = make(tail_bias=True)
    h, t = data(cover=(0, 20, 33))
    t[(t >= 5) & (t < 15)] = 2
    ref = full_log_softmax_reference(out, h)
    lp_ref = ref[numpy.arange(len(t)), t]
    numpy.testing.assert_allclose(out.log_prob(h, t), lp_ref, rtol=1e-12, atol=1e-13)
    assert abs(float(out.forward(h, t, train=False)) + lp_ref.mean()) < 1e-12


def test_ignored_rows_never_reach_a_tail():
    # a one-word shortlist (cutoffs 1, 15): whatever stands in for an ignored row's target must
    # not route it into a tail; the result equals the batch without those rows
    out = make(cutoffs=(1, 15), ignore_index=3)
    h, t = data(cover=(0, 20, 33))
    t[(t >= 1) & (t < 15)] = 0                  # valid rows: head word 0 and tail 1 only
    t[[2, 5]] = -1
    t[7] = 3
    loss = float(out.forward(h, t))
    dh = out.backward()
    keep = numpy.setdiff1d(numpy.arange(len(t)), [2, 5, 7])
    ref = make(cutoffs=(1, 15), ignore_index=3)
    assert abs(loss - float(ref.forward(h[keep], t[keep]))) < 1e-12
    ref.backward()
    assert set(out.grads) == set(ref.grads)
    for name in ref.grads:
        numpy.testing.assert_allclose(out.grads[name], ref.grads[name], rtol=1e-11, atol=1e-14)
    assert numpy.all(dh[[2, 5, 7]] == 0)
    numpy.testing.assert_array_equal(out.log_prob(h, t)[[2, 5, 7]], 0)


def test_float32_layer_stays_float32():
    out = make(dtype=numpy.float32, reduction="none", tail_bias=True)
    assert all(p.dtype == numpy.float32 for p in out.params.values())
    h, t = data()
    h = h.astype(numpy.float32)
    loss = out.forward(h, t)
    assert loss.dtype == numpy.float32
    dh = out.backward(numpy.linspace(0.5, 1.5, len(t)))          # float64 row weights
    assert dh.dtype == numpy.float32
    assert all(g.dtype == numpy.float32 for g in out.grads.values())
    assert out.log_prob(h, t).dtype == numpy.float32
