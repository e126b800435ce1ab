"""Shared test fixtures: one test body, run on each backend.

`backend_name` is parametrized over "numpy" (always) and "cupy" (marked `gpu`; skipped with the
reason from `engine.backend.gpu_available()` when no GPU can be used), `backend` builds that
backend, `float_dtype` runs a test in float32 and float64, `tol(dtype)` gives per-dtype
tolerances for `numpy.testing.assert_allclose`, and `to_host` turns any backend array into a
NumPy array. `small_grid` lowers the kernels' grid cap so that small arrays already need several
grid strides (it has no effect on the NumPy backend).

Select subsets with the marker: `pytest -m gpu` (GPU only), `pytest -m "not gpu"` (CPU only).
"""
from __future__ import annotations

import numpy
import pytest


from devices import BACKEND_PARAMS, TOLERANCES, _gpu_status, make_backend, to_host, tolerance  # noqa: F401


@pytest.fixture(params=BACKEND_PARAMS)
def backend_name(request):
    if request.param == "cupy":
        ok, info = _gpu_status()
        if not ok:
            pytest.skip(f"cupy backend: no usable GPU ({info})")
    return request.param


@pytest.fixture
def backend(backend_name):
    return make_backend(backend_name)


@pytest.fixture(params=["float32", "float64"])
def float_dtype(request):
    return numpy.dtype(request.param)


@pytest.fixture(name="to_host")
def to_host_fixture():
    return to_host


@pytest.fixture(name="tol")
def tol_fixture():
    return tolerance


@pytest.fixture
def small_grid(monkeypatch):
    """Cap kernel grids at 2 blocks so every launch strides over the grid several times."""
    from engine.backend import kernels
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    return 2
