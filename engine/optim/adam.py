"""Adam with decoupled weight decay (AdamW), dense and lazy row-sparse.

Dense step at step number t (1-based, the optimizer's global `step_count`), param p with grad g
(any shape), moments m, v (same shape, created as zeros on first use), lr a:

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p (1 - a wd) - a (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

This is `backend.adam_step` (NumPy reference in engine/backend/numpy_backend.py; one fused
elementwise kernel on the GPU). Weight decay is decoupled (AdamW), not L2 in the gradient.

Row-sparse step (`sparse_mode="lazy"`, the default) for RowSparseGrad(rows (N,), values
(N, D...)) coalesced to U unique rows r: `backend.adam_step_rows` applies the same formula to
p[r], m[r], v[r] only ("lazy Adam"). Bias correction uses the global t, not a per-row count.
How it differs from dense Adam on the densified gradient:

- Dense Adam moves *every* row each step: an untouched row has g = 0 but non-zero m keeps
  moving it (by a m_hat / (sqrt(v_hat) + eps)) while m and v decay. Lazy Adam leaves untouched
  rows and their moments exactly as they are, so a row's moments are "frozen" between touches.
- Weight decay shrinks touched rows only.
- The two agree exactly on every row touched at every step so far and (with wd = 0) on every
  row never touched (m = v = 0 there, so dense Adam does not move it either). They part on a
  row touched, then skipped.
Lazy Adam costs O(U D) per step instead of O(V D), the point for huge embedding/output tables.

`sparse_mode="dense"` densifies row-sparse grads (`grad.to_dense`) and runs the dense step:
exact dense-Adam semantics at O(V D) per step.

meProp (engine/layers/meprop.py) produces such row-sparse weight gradients: with the default
lazy mode a step moves only the k (unified) or the union of the per-example selected rows of W,
which is meProp's "sparse update"; with sparse_mode="dense" every row whose moments are non-zero
keeps moving, which is what the paper's (dense) Adam did. Both are tested in
tests/layers/test_meprop.py.
"""
from __future__ import annotations

from ..options import Option, at_least, in_range, parse_float
from .base import Optimizer, common_options


class Adam(Optimizer):
    """Adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=None,
    schedule=None, sparse_mode="lazy")."""

    name = "adam"
    OPTIONS = common_options(1e-3) + (
        Option("beta1", parse_float, 0.9, "Adam: decay of the first moment", check=in_range(0, 1)),
        Option("beta2", parse_float, 0.999, "Adam: decay of the second moment",
               check=in_range(0, 1)),
        Option("eps", parse_float, 1e-8, "Adam: epsilon of the denominator", flag="--adam-eps",
               check=at_least(0)),
    )
    slots = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 clip_norm=None, schedule=None, sparse_mode="lazy"):
        for what, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"Adam: {what} must be in [0, 1), got {b}")
        if float(eps) < 0:
            raise ValueError(f"Adam: eps must be >= 0, got {eps}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        super().__init__(lr, weight_decay=weight_decay, clip_norm=clip_norm, schedule=schedule,
                         sparse_mode=sparse_mode)

    def _update_dense(self, key, param, grad, lr):
        m = self._buffer("m", key, param)
        v = self._buffer("v", key, param)
        self.backend.adam_step(param, grad, m, v, lr, self.beta1, self.beta2, self.eps,
                               self.step_count, self.weight_decay)

    def _update_rows(self, key, param, rows_u, values_ud, lr):
        m = self._buffer("m", key, param)
        v = self._buffer("v", key, param)
        if rows_u.shape[0] == 0:
            return
        self.backend.adam_step_rows(param, rows_u, values_ud, m, v, lr, self.beta1, self.beta2,
                                    self.eps, self.step_count, self.weight_decay)

    def config(self):
        cfg = super().config()
        cfg.update(beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        return cfg
