"""Row-sparse gradients: a (rows, values) pair standing for a dense matrix that is zero but on
some rows. Produced by layers (embeddings, meProp rows, sparse-input and factored rows), consumed
by optimizers and by the distributed all-gather; it lives below both so neither imports the
other.

Shapes: rows (N,) int64 (duplicates allowed unless `unique`), values (N, D...) the
contributions, shape (V, D...) the dense shape; dense[rows[n]] += values[n].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RowSparseGrad:
    """Gradient that is zero except on some rows: dense[rows[n]] += values[n].

    rows: (N,) int64, possibly with duplicates unless `unique` is True;
    values: (N, D...) the contributions; shape: the dense shape (V, D...).
    """
    rows: Any
    values: Any
    shape: tuple
    unique: bool = False

    def coalesced(self, backend) -> "RowSparseGrad":
        """The same gradient with duplicate rows summed (rows ascending, unique)."""
        if self.unique:
            return self
        rows, values = backend.coalesce_rows(self.rows, self.values)
        return RowSparseGrad(rows, values, self.shape, unique=True)

    def to_dense(self, backend):
        dense = backend.zeros(self.shape, self.values.dtype)
        backend.scatter_add_rows(dense, self.rows, self.values)
        return dense


__all__ = ["RowSparseGrad"]
