"""Backend helpers shared by tests: build a backend by name (skipping without a GPU), move
arrays to the host, per-dtype tolerances. Imported by conftest.py and by test modules
(`from devices import make_backend`), so no test imports `conftest` by name.
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
