"""Backends: where arrays live and how the shared primitives run.

`get_backend("cpu" | "gpu" | "auto")` returns a `Backend` (NumPy, the reference) or a
`CupyBackend` (CuPy with the kernels of `rawkernels/`). Importing this package never imports
CuPy; "auto" picks the GPU only when CuPy imports and sees a device, and says which it chose.
"""
from __future__ import annotations

from .numpy_backend import Backend

_VALID = ("cpu", "gpu", "auto")


def gpu_available() -> tuple[bool, str]:
    """(True, description) when CuPy imports and sees a CUDA device, else (False, reason)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return True, name


def get_backend(device: str = "auto", verbose: bool = False) -> Backend:
    """The backend for `device`; "gpu" fails with the reason when no GPU can be used."""
    if isinstance(device, Backend):
        return device
    if device not in _VALID:
        raise ValueError(f"device must be one of {_VALID}, got {device!r}")
    if device in ("gpu", "auto"):
        ok, info = gpu_available()
        if ok:
            from .cupy_backend import CupyBackend
            backend = CupyBackend()
            if verbose:
                print(f"[engine] device: gpu ({info})")
            return backend
        if device == "gpu":
            raise RuntimeError(f"device='gpu' was asked for but no GPU can be used: {info}")
        if verbose:
            print(f"[engine] device: cpu (no GPU: {info})")
        return Backend()
    if verbose:
        print("[engine] device: cpu")
    return Backend()


__all__ = ["Backend", "get_backend", "gpu_available"]
