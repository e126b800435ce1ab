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

import functools

import numpy
import pytest

from engine.backend import Backend, gpu_available

#: Tolerances for comparing a backend's result with a float64 reference computed from the same
#: inputs (float32 results are rounded intermediates; float64 ones differ only in order of sums).
TOLERANCES = {
    numpy.dtype(numpy.float16): dict(rtol=2e-3, atol=2e-3),
    numpy.dtype(numpy.float32): dict(rtol=2e-5, atol=2e-6),
    numpy.dtype(numpy.float64): dict(rtol=1e-11, atol=1e-12),
}

BACKEND_PARAMS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


@functools.lru_cache(maxsize=None)
def _gpu_status():
    return gpu_available()


def make_backend(name: str) -> Backend:
    """The backend called `name` ("numpy" or "cupy"); skips the test when the GPU is missing."""
    if name == "numpy":
        return Backend()
    if name == "cupy":
        ok, info = _gpu_status()
        if not ok:
            pytest.skip(f"cupy backend: no usable GPU ({info})")
        from engine.backend.cupy_backend import CupyBackend
        return CupyBackend()
    raise ValueError(f"unknown backend {name!r}")


def to_host(x):
    """Any backend array (or scalar) -> NumPy array."""
    if isinstance(x, numpy.ndarray):
        return x
    get = getattr(x, "get", None)  # cupy.ndarray
    if callable(get) and type(x).__module__.startswith("cupy"):
        return numpy.asarray(get())
    return numpy.asarray(x)


def tolerance(dtype) -> dict:
    return dict(TOLERANCES[numpy.dtype(dtype)])


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
