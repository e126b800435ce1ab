"""Counter-based random numbers that are identical on NumPy and CuPy.

`uniform_from_key(xp, shape, key, dtype, offset=0)` hashes (key, element index) with the
splitmix64 finaliser in uint64 arithmetic that wraps the same way on both array modules. A
dropout mask is a pure function of (seed, step, layer): the CPU and the GPU draw the same mask,
and a resumed run draws what the uninterrupted run would have, with no generator state to save.

`offset` numbers the elements from `offset` instead of 0: an array (R, ...) keyed with offset
r0 * (elements per row) holds rows r0 ... r0 + R - 1 of the array (B, ...) drawn with offset 0.
A rank that holds rows [r0, r0 + R) of a global minibatch (engine/distributed) so draws exactly
the masks of those rows in the single-process run.
"""
from __future__ import annotations

import numpy

_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def mix_key(*parts: int) -> int:
    """Fold integers into one 64-bit key (host-side splitmix64 chain)."""
    h = 0x243F6A8885A308D3
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) & _MASK64
        h = (h + _GOLDEN) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
        z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
        h = z ^ (z >> 31)
    return h


def uniform_from_key(xp, shape, key, dtype, offset=0):
    """Uniform [0, 1) array of `shape`, a pure function of `key` (an int or tuple of ints) and
    of each element's index counted from `offset` (see the module docstring)."""
    if isinstance(key, (tuple, list)):
        key = mix_key(*key)
    n = int(numpy.prod(shape)) if len(shape) else 1
    u64 = xp.uint64
    with numpy.errstate(over="ignore"):
        index = xp.arange(n, dtype=u64)
        if offset:
            index += u64(int(offset) & _MASK64)
        z = index * u64(_GOLDEN) + u64(int(key) & _MASK64)
        z = (z ^ (z >> u64(30))) * u64(_MUL1)
        z = (z ^ (z >> u64(27))) * u64(_MUL2)
        z = z ^ (z >> u64(31))
    # top 53 bits -> double in [0, 1), then to the requested dtype (float32 rounding may reach
    # 1.0 for the largest values, so clip below 1)
    u = (z >> u64(11)).astype(xp.float64) * (1.0 / (1 << 53))
    dtype = numpy.dtype(dtype)
    u = u.astype(dtype)
    if dtype != numpy.float64:
        # a NumPy scalar, not a 0-d NumPy array: CuPy ufuncs refuse host arrays
        u = xp.minimum(u, numpy.nextafter(dtype.type(1), dtype.type(0)))
    return u.reshape(shape)
