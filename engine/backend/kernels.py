"""The lazy CUDA kernel loader: one NVRTC module per (file, dtype) holding all its kernels.

`get_kernel("softmax_xent.cu", "softmax_xent_fused", numpy.float32)` returns the CuPy function
for `softmax_xent_fused<float>`. On first use of a (file, dtype) the whole file is compiled once,
with every kernel `KERNELS` lists for it as an NVRTC name expression:

    cupy.RawModule(code=module_code(file), options=compile_options(),
                   name_expressions=name_expressions(file, dtype))

(`module_spec(file, dtype)` returns exactly these three arguments), and the module is cached in
this process per (file, dtype, device); CuPy also caches the binary on disk. A cold start thus
compiles at most 2 x (number of .cu files) modules, not one per kernel. CuPy is imported only
inside the functions, so `import engine` works on a machine without CUDA or CuPy.

`KERNELS` lists, per source file, the kernel templates the backend launches; `get_kernel`
refuses a name not listed there (a new kernel is one line here, and the compile test
tests/backend/test_kernels_compile.py then compiles it through the same NVRTC call, options
and name expressions as this loader, on CI, without a GPU).

Launch sizing: every kernel is grid-stride, so a grid only needs to be large enough to fill the
device. `launch_1d(n)` sizes a flat elementwise launch, `launch_rows(rows)` a one-block-per-row
launch; both cap the grid at `MAX_BLOCKS` (tests lower it to force several grid strides).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy

#: Kernel templates per source file, and the backend method that launches each.
KERNELS: dict[str, tuple[str, ...]] = {
    "softmax_xent.cu": ("softmax_xent_fused",          # CupyBackend.softmax_xent_fused
                        "logsumexp_chunk_update",      # CupyBackend.logsumexp_chunk_update
                        "softmax_xent_grad_chunk"),    # CupyBackend.softmax_xent_grad_chunk
    "scatter_rows.cu": ("scatter_add_rows",            # CupyBackend.scatter_add_rows
                        "gather_rows"),                # CupyBackend.gather_rows
    "adam.cu": ("adam_step",                           # CupyBackend.adam_step
                "adam_step_rows"),                     # CupyBackend.adam_step_rows
    "factored_rows.cu": ("factored_gather_rows",       # CupyBackend.factored_gather_rows
                         "factored_scatter_atomic",    # CupyBackend.factored_scatter_rows
                         "factored_scatter_sorted"),   # ... (deterministic=True)
    "ffi.cu": ("ffi_forward",                          # CupyBackend.ffi_forward
               "ffi_backward",                         # CupyBackend.ffi_backward (dw, atomic dx)
               "ffi_grad_input_csc"),                  # ... (deterministic dx)
    "topk_rows.cu": ("topk_rows",),                    # CupyBackend.topk
}

#: C++ element type of each supported NumPy dtype.
CTYPES: dict[str, str] = {"float32": "float", "float64": "double"}

#: Threads per block for every launch (a multiple of 32: the row kernels reduce by warps).
BLOCK = 256
#: Largest grid a launcher asks for; the kernels stride over whatever is left.
MAX_BLOCKS = 65535

_modules: dict = {}
_functions: dict = {}


def source_dir() -> Path:
    """The rawkernels/ folder (its quoted includes need it as `-I`)."""
    import rawkernels
    finder = getattr(rawkernels, "source_dir", None)
    if finder is not None:
        return Path(finder())
    # rawkernels imported as a namespace package (e.g. a stale editable install): search it
    for entry in getattr(rawkernels, "__path__", ()):
        if (Path(entry) / "common.cuh").is_file():
            return Path(entry)
    raise FileNotFoundError("rawkernels: cannot locate the CUDA sources (common.cuh)")


def read_source(file: str) -> str:
    path = source_dir() / file
    if not path.is_file():
        raise FileNotFoundError(f"rawkernels: no kernel source {file!r} in {path.parent}")
    return path.read_text(encoding="utf-8")


def module_code(file: str) -> str:
    """The code handed to NVRTC: the source plus a trailing comment with a hash of the headers.

    CuPy's on-disk kernel cache is keyed by the code string and the options, not by the files
    that `#include "..."` pulls in through `-I`; the hash makes an edited header invalidate it.
    """
    digest = hashlib.sha256()
    for header in sorted(source_dir().glob("*.cuh")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    return read_source(file) + f"\n// rawkernels headers sha256 {digest.hexdigest()}\n"


def compile_options() -> tuple[str, ...]:
    """NVRTC options used for every module (the compile test uses the same standard)."""
    return ("-std=c++14", f"-I{source_dir()}")


def ctype(dtype) -> str:
    """'float' or 'double' for float32/float64; ValueError for any other dtype."""
    dt = numpy.dtype(dtype)
    try:
        return CTYPES[dt.name]
    except KeyError:
        raise ValueError(f"no CUDA kernel instantiation for dtype {dt.name} "
                         f"(have {sorted(CTYPES)})") from None


def name_expression(name: str, dtype) -> str:
    """The NVRTC name expression of a kernel template instance, e.g. 'gather_rows<float>'."""
    return f"{name}<{ctype(dtype)}>"


def name_expressions(file: str, dtype) -> list[str]:
    """The name expressions of every kernel of `file` for `dtype` (what one module holds)."""
    if file not in KERNELS:
        raise KeyError(f"rawkernels: {file!r} is not in kernels.KERNELS (have {sorted(KERNELS)})")
    return [name_expression(name, dtype) for name in KERNELS[file]]


def module_spec(file: str, dtype) -> tuple[str, tuple[str, ...], list[str]]:
    """(code, options, name_expressions): the exact arguments the loader hands to
    `cupy.RawModule` for the module of (file, dtype); the compile test uses the same."""
    return module_code(file), compile_options(), name_expressions(file, dtype)


def get_module(file: str, dtype):
    """The compiled module of `rawkernels/<file>` for `dtype` (all its kernels), cached per
    (file, dtype, current device)."""
    import cupy
    dt = numpy.dtype(dtype)
    # a loaded module belongs to one device's context: key the cache by the current device
    key = (file, dt.name, cupy.cuda.Device().id)
    module = _modules.get(key)
    if module is None:
        code, options, exprs = module_spec(file, dt)
        module = cupy.RawModule(code=code, options=options, name_expressions=exprs)
        _modules[key] = module
    return module


def get_kernel(file: str, name: str, dtype):
    """The compiled `name<T>` of `rawkernels/<file>` for T = dtype (its module compiled once;
    the function looked up once per device)."""
    if name not in KERNELS.get(file, ()):
        raise KeyError(f"rawkernels: kernel {name!r} of {file!r} is not listed in "
                       f"kernels.KERNELS (add it there)")
    import cupy
    dt = numpy.dtype(dtype)
    key = (file, name, dt.name, cupy.cuda.Device().id)
    fn = _functions.get(key)
    if fn is None:
        fn = get_module(file, dt).get_function(name_expression(name, dt))
        _functions[key] = fn
    return fn


def clear_cache() -> None:
    """Forget the compiled modules (the next get_kernel recompiles, or hits CuPy's disk cache)."""
    _modules.clear()
    _functions.clear()


def _blocks(n_blocks: int) -> int:
    return int(max(1, min(int(n_blocks), int(MAX_BLOCKS))))


def launch_1d(n: int, block: int | None = None) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a flat grid-stride loop over n elements."""
    block = BLOCK if block is None else int(block)
    return (_blocks(-(-int(n) // block)),), (block,)


def launch_rows(rows: int, block: int | None = None) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a one-block-per-row kernel over `rows` rows."""
    block = BLOCK if block is None else int(block)
    return (_blocks(rows),), (block,)


__all__ = ["BLOCK", "KERNELS", "MAX_BLOCKS", "clear_cache", "compile_options", "ctype",
           "get_kernel", "get_module", "launch_1d", "launch_rows", "module_code", "module_spec",
           "name_expression", "name_expressions", "read_source", "source_dir"]
