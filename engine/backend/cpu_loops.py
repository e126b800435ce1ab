"""CPU hot loops that NumPy does badly, compiled with numba (pure-NumPy fallback if absent).

scatter_add_rows: out[ids[n], :] += rows[n, :] with duplicate ids accumulated. NumPy's
`out[ids] += rows` keeps one contribution per duplicate; `np.add.at` is correct but slow.
"""
from __future__ import annotations

import numpy

try:  # numba is a declared dependency; the fallback keeps `import engine` working without it
    import numba
except Exception:  # pragma: no cover - exercised only where numba cannot be imported
    numba = None


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _scatter_add_rows_2d(out_vd, ids_n, rows_nd):
        n_rows = ids_n.shape[0]
        width = rows_nd.shape[1]
        for n in range(n_rows):
            r = ids_n[n]
            for j in range(width):
                out_vd[r, j] += rows_nd[n, j]


def scatter_add_rows(out_vd, ids_n, rows_nd):
    """In place: out[ids[n]] += rows[n] (duplicates accumulate). Checks ids are in range."""
    ids_n = numpy.asarray(ids_n).reshape(-1)
    if ids_n.size == 0:
        return out_vd
    lo, hi = ids_n.min(), ids_n.max()
    if lo < 0 or hi >= out_vd.shape[0]:
        raise IndexError(f"scatter_add_rows: ids span [{lo}, {hi}] but the table has "
                         f"{out_vd.shape[0]} rows")
    rows2 = rows_nd.reshape(ids_n.shape[0], -1)
    out2 = out_vd.reshape(out_vd.shape[0], -1)
    if (numba is not None and out2.flags.c_contiguous and rows2.dtype == out2.dtype
            and out2.dtype in (numpy.float32, numpy.float64)):
        _scatter_add_rows_2d(out2, ids_n.astype(numpy.int64, copy=False),
                             numpy.ascontiguousarray(rows2))
        if out2 is not out_vd and not numpy.shares_memory(out2, out_vd):
            out_vd[...] = out2.reshape(out_vd.shape)
    else:
        numpy.add.at(out2, ids_n, rows2)
        if not numpy.shares_memory(out2, out_vd):
            out_vd[...] = out2.reshape(out_vd.shape)
    return out_vd
