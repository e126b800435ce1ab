"""Backends: where arrays live and how the shared primitives run.

`get_backend("cpu" | "gpu" | "auto")` returns a `Backend` (NumPy, the reference) or a
`CupyBackend` (CuPy with the kernels of `rawkernels/` and cuSPARSE). Importing this package never
imports CuPy; "auto" picks the GPU only when CuPy imports and sees a device, and says which it
chose. Layers reach every kernel through a Backend method and never branch on the device: what
differs between devices is a backend attribute (`sync_every_default`, `host_checks_are_free`,
`ffi_methods`) or a primitive.

Primitives, their NumPy reference and their kernel (a new backend is one class overriding these;
tests/backend/test_backend_signatures.py checks that every override keeps the signature):

    primitive                          NumPy reference            GPU (CupyBackend)
    gather_rows, scatter_add_rows      numpy_backend.py (numba)   scatter_rows.cu
    coalesce_rows, unique_inverse,     numpy_backend.py           the same code on CuPy arrays
      rank_ids, sort_groups
    softmax_xent_fused,                numpy_backend.py           softmax_xent.cu
      logsumexp_chunk_update,
      softmax_xent_grad_chunk
    adam_step, adam_step_rows          numpy_backend.py (numba)   adam.cu
    topk                               numpy_topk.py (numba)      topk_rows.cu (cupy_topk.py)
    ffi_forward, ffi_backward          numpy_ffi.py (cpu_ffi.py)  ffi.cu, cuSPARSE (cupy_ffi.py)
    factored_gather_rows,              numpy_factored.py          factored_rows.cu
      factored_scatter_rows                                       (cupy_factored.py)
    csr_matrix, to_device_csr,         numpy_sparse.py (SciPy,    cuSPARSE SpMM (cupy_sparse.py)
      csr_matmul, meprop_products        cpu_sparse.py)
    uniform                            random_hash.py             the same code on CuPy arrays

Host reads per training step (what each reads and why): syncs.py.
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
