"""Every kernel launch of the CuPy backend passes arguments of exactly the types its CUDA
signature declares, checked without a GPU.

A wrong argument type is silent on the device (a Python int where the kernel reads `const int`,
an int32 array behind a `const long long*`, a strided view behind a pointer): CuPy passes the
bytes it is given. This test parses the parameter list of every `__global__` template in
rawkernels/*.cu and runs each CupyBackend launcher on NumPy arrays (a CupyBackend made without
CuPy, with `xp = numpy`), with `kernels.get_kernel` replaced by a checker that compares the
launch's (grid, block, args) with the parsed signature: pointers must be C-contiguous arrays of
the declared element type (T, int64 for `long long`, int32 for `int`) -- except the matrices of
kernels that take a row stride `ld`, which need only adjacent columns -- non-const pointers
writable, scalars NumPy scalars of the declared type. Nothing runs on a device: the results are
not checked here (tests/backend/test_primitives.py and the others do that on a GPU).
"""
from __future__ import annotations

import re

import numpy
import pytest

from engine.backend import kernels
from engine.backend.cupy_backend import CupyBackend

_SCALARS = {"T": None, "long long": numpy.int64, "int": numpy.int32}
_POINTEES = {"T": None, "long long": numpy.dtype(numpy.int64), "int": numpy.dtype(numpy.int32)}


def parse_signatures():
    """{kernel name: [(is_pointer, is_const, base type, name), ...]} from rawkernels/*.cu."""
    sigs = {}
    for cu_file in kernels.KERNELS:
        source = re.sub(r"//[^\n]*", "", kernels.read_source(cu_file))
        for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{", source):
            parsed = []
            for param in params.split(","):
                text = " ".join(param.replace("__restrict__", " ").split())
                decl, pname = text.rsplit(" ", 1)
                pointer = decl.endswith("*")
                decl = decl.rstrip("*").strip()
                const = decl.startswith("const ")
                base = decl[len("const "):] if const else decl
                assert base in _SCALARS, f"{cu_file}: {name}: unknown parameter type {text!r}"
                parsed.append((pointer, const, base, pname))
            sigs[name] = parsed
    return sigs


SIGNATURES = parse_signatures()


class LaunchChecker:
    def __init__(self):
        self.launched = []

    def get_kernel(self, file, name, dtype):
        assert name in kernels.KERNELS[file], f"{name} is not listed for {file}"
        dt = numpy.dtype(dtype)
        assert dt in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)), dt

        def launch(grid, block, args):
            assert isinstance(grid, tuple) and isinstance(block, tuple)
            assert all(isinstance(g, int) and g >= 1 for g in grid + block), (grid, block)
            assert block[0] % 32 == 0, f"{name}: block {block} not a multiple of 32"
            sig = SIGNATURES[name]
            assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)} parameters"
            strided = any(p[3] == "ld" for p in sig)      # matrices with a row stride
            for i, (arg, (pointer, const, base, pname)) in enumerate(zip(args, sig)):
                where = f"{name}<{dt.name}> argument {i}"
                if pointer:
                    want = dt if base == "T" else _POINTEES[base]
                    assert isinstance(arg, numpy.ndarray), f"{where}: {type(arg)} is not an array"
                    assert arg.dtype == want, f"{where}: dtype {arg.dtype}, kernel reads {want}"
                    if strided and arg.ndim == 2:
                        assert arg.strides[1] == arg.itemsize, f"{where}: columns not adjacent"
                    else:
                        assert arg.flags.c_contiguous, f"{where}: not C-contiguous"
                    if not const:
                        assert arg.flags.writeable, f"{where}: output not writable"
                        arg[...] = 0       # (valid ids for what the launcher does next)
                else:
                    want = dt.type if base == "T" else _SCALARS[base]
                    assert type(arg) is want, f"{where}: {type(arg).__name__}, kernel reads {want.__name__}"
            self.launched.append(name)
        return launch


@pytest.fixture
def fake_gpu(monkeypatch):
    be = CupyBackend.__new__(CupyBackend)      # no CuPy: the launchers run on NumPy arrays
    be.xp = numpy
    be.device_id = 0
    checker = LaunchChecker()
    monkeypatch.setattr(kernels, "get_kernel", checker.get_kernel)
    return be, checker


def test_every_kernel_has_a_parsed_signature():
    listed = {name for names in kernels.KERNELS.values() for name in names}
    assert listed <= set(SIGNATURES), sorted(listed - set(SIGNATURES))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_launch_arguments_match_the_kernel_signatures(fake_gpu, dtype):
    be, checker = fake_gpu
    rng = numpy.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)        # noqa: E731
    ids32 = rng.integers(0, 10, size=7).astype(numpy.int32)           # any integer ids
    table = f(10, 3)
    be.gather_rows(table, ids32)
    be.scatter_add_rows(table, ids32, f(7, 3))
    logits = f(5, 12)
    targets = numpy.array([0, 3, -1, 11, 2], dtype=numpy.int32)
    be.softmax_xent_fused(logits, targets, 0.5)
    be.softmax_xent_fused(f(5, 20)[:, 4:16], targets, 0.5)              # a column slice
    run = [numpy.full(5, -numpy.inf, dtype), numpy.zeros(5, dtype), numpy.zeros(5, dtype)]
    be.logsumexp_chunk_update(f(5, 12), 4, targets, *run)
    be.softmax_xent_grad_chunk(f(5, 12), 4, targets, f(5), 1.0)
    p, g, m, v = f(6, 4), f(6, 4), f(6, 4), numpy.abs(f(6, 4))
    be.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 3, 0.01)
    be.adam_step_rows(p, numpy.array([1, 4], numpy.int32), f(2, 4), m, v, 1e-3, 0.9, 0.999,
                      1e-8, 3)
    for magnitude in (False, True):
        for order in ("score", "index"):
            be.topk(f(4, 30), 5, magnitude=magnitude, order=order)
    V = f(9, 4)
    tid = numpy.array([[1, 8], [3, 3]], dtype=numpy.int32)             # (B, K) int32 ids
    be.factored_gather_rows(V, tid.reshape(-1), numpy.array([True, True, False, True]))
    for det in (False, True):
        be.factored_scatter_rows(V, tid.reshape(-1), f(4), f(2, 4), 2, deterministic=det)
        be.factored_scatter_rows(V, tid.T.reshape(-1)[::1], f(4)[::1], f(2, 4), 2, deterministic=det)
    idx = numpy.stack([rng.choice(11, 3, replace=False) for _ in range(40)]).astype(numpy.int32)
    index = be.ffi_index(idx, 11, rows_sorted=False)
    xt = numpy.ascontiguousarray(f(6, 11).T)
    w = f(40, 3)
    be.ffi_forward(xt, index, w, f(40), method="kernel")
    be.ffi_forward(xt, index, w, None, method="kernel")
    dy = f(6, 40)
    for det in (False, True):
        be.ffi_backward(dy, xt, index, w, method="kernel", deterministic=det)
        be.ffi_backward(dy, xt, index, w, method="kernel", deterministic=det, need_input_grad=False)
    be.ffi_backward(dy, xt, index, w, method="cusparse", deterministic=True)   # dw kernel + CSC
    be.ffi_backward(dy, xt, index, w, method="cusparse", need_input_grad=False)
    assert set(checker.launched) == set(SIGNATURES), sorted(set(SIGNATURES) - set(checker.launched))
