"""CSR primitives (engine/backend/numpy_sparse.py, cupy_sparse.py): the conversion of a host CSR
(canonical or not) to the backend's, its products in every layout and transpose, and meProp's
per-example products, one body per backend against plain dense NumPy."""
from __future__ import annotations

import numpy
import pytest
import scipy.sparse
from numpy.testing import assert_allclose, assert_array_equal


def random_csr(rng, rows, cols, density=0.2, dtype=numpy.float64, canonical=True):
    x = scipy.sparse.random(rows, cols, density=density, format="csr", random_state=rng,
                            dtype=dtype)
    x.data = rng.standard_normal(x.data.shape).astype(dtype)
    if not canonical:          # unsorted columns within rows and a duplicate entry
        coo = x.tocoo()
        r = numpy.concatenate([coo.row[::-1], coo.row[:1]])
        c = numpy.concatenate([coo.col[::-1], coo.col[:1]])
        d = numpy.concatenate([coo.data[::-1], coo.data[:1]])
        order = numpy.argsort(r, kind="stable")
        x = scipy.sparse.csr_matrix((d[order], c[order], numpy.searchsorted(r[order], numpy.arange(rows + 1))),
                                    shape=(rows, cols))
        assert not x.has_canonical_format
    return x


@pytest.mark.parametrize("canonical", [True, False])
def test_to_device_csr_keeps_the_matrix(backend, float_dtype, to_host, canonical):
    rng = numpy.random.default_rng(1)
    x = random_csr(rng, 9, 31, dtype=float_dtype, canonical=canonical)
    dense = x.toarray()
    dx = backend.to_device_csr(x)
    assert backend.is_csr(dx) and dx.shape == (9, 31) and dx.dtype == float_dtype
    assert backend.to_device_csr(dx) is dx                       # already the backend's
    as64 = backend.to_device_csr(x, numpy.float64)
    assert as64.dtype == numpy.float64
    eye = backend.asarray(numpy.eye(31, dtype=float_dtype))
    assert_allclose(to_host(backend.csr_matmul(dx, eye)), dense, rtol=1e-6)
    with pytest.raises(TypeError, match="CSR"):
        backend.to_device_csr(dense)


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_csr_matmul_in_every_layout(backend, float_dtype, to_host, tol, transpose_a, layout):
    rng = numpy.random.default_rng(2)
    x = random_csr(rng, 13, 40, dtype=float_dtype)
    inner = 13 if transpose_a else 40
    b = rng.standard_normal((inner, 2 * 7)).astype(float_dtype)
    bd = backend.asarray(b)
    if layout == "F":
        bd = backend.xp.asfortranarray(bd)
    elif layout == "strided":
        bd = backend.asarray(numpy.ascontiguousarray(numpy.repeat(b, 2, axis=1)))[:, ::2]
    out = backend.csr_matmul(backend.to_device_csr(x), bd, transpose_a=transpose_a)
    op = x.toarray().astype(numpy.float64)
    want = (op.T if transpose_a else op) @ b.astype(numpy.float64)
    assert out.shape == want.shape
    assert_allclose(to_host(out), want, **tol(float_dtype))


def test_csr_matrix_from_parts(backend, to_host):
    data = backend.asarray(numpy.array([1.0, 2.0, 3.0]))
    indices = backend.asarray(numpy.array([0, 2, 1], dtype=numpy.int32))
    indptr = backend.asarray(numpy.array([0, 2, 2, 3], dtype=numpy.int32))
    m = backend.csr_matrix(data, indices, indptr, (3, 4))
    assert backend.is_csr(m) and m.shape == (3, 4)
    b = numpy.arange(8.0).reshape(4, 2)
    want = numpy.array([[1.0, 0, 2.0, 0], [0, 0, 0, 0], [0, 3.0, 0, 0]]) @ b
    assert_allclose(to_host(backend.csr_matmul(m, backend.asarray(b))), want)


@pytest.mark.parametrize("B,O,I,k", [(9, 23, 7, 4), (33, 70, 17, 9), (3, 5, 2, 5)])
def test_meprop_products_equal_dense_products(backend, float_dtype, to_host, B, O, I, k):
    rng = numpy.random.default_rng(O)
    idx = numpy.sort(numpy.stack([rng.choice(O, k, replace=False) for _ in range(B)]), axis=1)
    vals = rng.standard_normal((B, k)).astype(float_dtype)
    x = rng.standard_normal((B, I)).astype(float_dtype)
    W = rng.standard_normal((O, I)).astype(float_dtype)
    dy = numpy.zeros((B, O))
    numpy.put_along_axis(dy, idx, vals.astype(numpy.float64), axis=1)
    reads = backend.host_reads
    rows, dW, dx = backend.meprop_products(backend.asarray(idx), backend.asarray(vals),
                                           backend.asarray(x), backend.asarray(W))
    assert backend.host_reads - reads <= 1                      # U, on the device
    used = numpy.flatnonzero(numpy.abs(dy).sum(axis=0) > 0)
    assert_array_equal(to_host(rows), numpy.unique(idx))
    t = dict(rtol=1e-4, atol=1e-4) if float_dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_allclose(to_host(dW), (dy.T @ x.astype(numpy.float64))[numpy.unique(idx)], **t)
    assert_allclose(to_host(dx), dy @ W.astype(numpy.float64), **t)
    assert used.size <= to_host(rows).size
    _, _, none = backend.meprop_products(backend.asarray(idx), backend.asarray(vals),
                                         backend.asarray(x), backend.asarray(W), need_dx=False)
    assert none is None


@pytest.mark.parametrize("path", ["union", "numba", "numpy"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_cpu_meprop_products_every_path(monkeypatch, path, dtype):
    """The three CPU paths of meprop_products (BLAS over the union of the rows; the numba
    counting sort + per-row loops, taken when many distinct rows are possible; the NumPy
    fallback without numba) against the dense products of the scattered dy."""
    from engine.backend import Backend, cpu_sparse
    if path == "numba" and cpu_sparse.numba is None:
        pytest.skip("numba is not importable")
    if path == "numpy":
        monkeypatch.setattr(cpu_sparse, "numba", None)
    B, O, I, k = 20, 80, 6, 3                 # min(O, B k) = 60 >= UNION_GAIN k = 36
    if path == "union":
        monkeypatch.setattr(cpu_sparse, "UNION_GAIN", 100)
    rng = numpy.random.default_rng(21)
    idx = numpy.sort(numpy.stack([rng.choice(O, k, replace=False) for _ in range(B)]), axis=1)
    vals = rng.standard_normal((B, k)).astype(dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    W = rng.standard_normal((O, I)).astype(dtype)
    dy = numpy.zeros((B, O))
    numpy.put_along_axis(dy, idx, vals.astype(numpy.float64), axis=1)
    be = Backend()
    reads = be.host_reads
    rows, dW, dx = be.meprop_products(idx, vals, x, W)
    assert be.host_reads - reads == 1        # U sizes dW_u: declared as one read, as on a GPU
    t = dict(rtol=1e-5, atol=1e-5) if dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_array_equal(rows, numpy.unique(idx))
    assert_allclose(dW, (dy.T @ x.astype(numpy.float64))[numpy.unique(idx)], **t)
    assert_allclose(dx, dy @ W.astype(numpy.float64), **t)
    assert dW.dtype == dx.dtype == dtype
