"""Row primitives of the factored output layer (engine/outputs/factored.py): the NumPy reference.

Shapes: V (Dv, d) the factored table (Dv = D outputs), N = B K target slots, ids (N,) integer,
valid (N,) bool, coef (N,), rows (B, d) the per-example vectors (U_new^{-T} h_j).

    factored_gather_rows    out[n] = V[ids[n]] where valid[n], else 0               (N, d)
    factored_scatter_rows   V[ids[n]] += coef[n] * rows[n // K], repeated ids accumulate

GPU: rawkernels/factored_rows.cu, launched by cupy_factored.py (the scatter atomic, or with
`deterministic=True` sorted by id and summed per row in a fixed order). The CPU scatter is the
backend's numba scatter-add: sequential, hence deterministic.
"""
from __future__ import annotations


class FactoredPrimitives:
    """Mixin of `Backend`: target-row gather and row scatter of the factored layer."""

    def factored_gather_rows(self, V_dd, ids_n, valid_n):
        """V[ids] (N, d) with zero rows where not valid (ids of invalid slots may be any id
        of the table, e.g. 0)."""
        out = V_dd[ids_n]
        out *= valid_n.reshape(-1, 1)
        return out

    def factored_scatter_rows(self, V_dd, ids_n, coef_n, rows_bd, K, deterministic=False):
        """V[ids[n]] += coef[n] * rows[n // K] for n < N = B K, in place; repeated ids
        accumulate. Returns V. (`deterministic` concerns the GPU; the CPU always is.)"""
        vals = coef_n[:, None] * self.xp.repeat(rows_bd, int(K), axis=0)
        self.scatter_add_rows(V_dd, ids_n, vals.astype(V_dd.dtype, copy=False))
        return V_dd
