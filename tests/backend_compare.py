"""Helpers of the NumPy-vs-CuPy tests (the *_gpu.py files): run a layer or a model on the
backend under test and on the NumPy reference in float64, bring every result to the host, and
compare with a tolerance per dtype.

One test body serves both backends of the `backend` fixture (tests/conftest.py): on "numpy" it
compares a float32 run with the float64 reference (a real check of the float32 tolerance below)
or a float64 run with itself (the test's logic is exercised on the CPU); on "cupy" (marked gpu,
skipped with the reason without one) the same body checks the kernels and cuBLAS/cuSPARSE paths.

`tests/devices.py` holds the tolerances of one primitive against its reference. Results made of
several products, or of a few training steps, use `COMPOSITE` (float32: rtol 2e-4; float64:
1e-9). On the NumPy backend the float32 runs of the *_gpu.py tests against float64 stay below
8% of these tolerances (most below 1%), so a GPU's other order of sums has ample room, while a
wrong index or a missing term (errors of order one) cannot pass. The absolute part is relative
to the largest entry of the reference, so tiny entries of a large array do not decide alone.
"""
from __future__ import annotations

import numpy
from numpy.testing import assert_allclose

from devices import to_host
from engine.backend import Backend
from engine.row_sparse import RowSparseGrad

#: rtol, and atol as a fraction of max |reference|, for composite results
COMPOSITE = {
    numpy.dtype(numpy.float32): dict(rtol=2e-4, atol=2e-5),
    numpy.dtype(numpy.float64): dict(rtol=1e-9, atol=1e-11),
}

REFERENCE = Backend()


def host(x, backend=None):
    """Any backend array, 0-d array, scalar or RowSparseGrad -> a float64/int NumPy array
    (a RowSparseGrad becomes its dense matrix)."""
    if isinstance(x, RowSparseGrad):
        rows = to_host(x.rows).astype(numpy.int64)
        values = to_host(x.values).astype(numpy.float64)
        dense = numpy.zeros(x.shape, dtype=numpy.float64)
        numpy.add.at(dense, rows, values.reshape((rows.size,) + tuple(x.shape[1:])))
        return dense
    a = to_host(x)
    return a.astype(numpy.float64) if a.dtype.kind == "f" else a


def grads_of(layer):
    """{name: dense float64 host gradient} of a layer (None gradients left out)."""
    return {name: host(g) for name, g in layer.grads.items() if g is not None}


def assert_close(got, want, dtype, factor=1.0, err_msg=""):
    """Elementwise comparison with the composite tolerance of `dtype` (times `factor`)."""
    t = COMPOSITE[numpy.dtype(dtype)]
    got, want = host(got), host(want)
    assert got.shape == want.shape, f"{err_msg}: shape {got.shape} != {want.shape}"
    scale = float(numpy.nanmax(numpy.abs(want))) if want.size else 0.0
    assert_allclose(got, want, rtol=t["rtol"] * factor,
                    atol=t["atol"] * factor * max(scale, 1e-30), err_msg=err_msg)


def assert_same_dicts(got: dict, want: dict, dtype, factor=1.0, what=""):
    assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for key in want:
        assert_close(got[key], want[key], dtype, factor, err_msg=f"{what}{key}")


def model_state(model):
    """The model's state_dict as float64 (ints kept) host arrays."""
    return {k: host(v) for k, v in model.state_dict().items()}


__all__ = ["COMPOSITE", "REFERENCE", "assert_close", "assert_same_dicts", "grads_of", "host",
           "model_state"]
