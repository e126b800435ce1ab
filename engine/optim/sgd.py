"""SGD with optional (Nesterov) momentum and L2 weight decay, dense and row-sparse.

Dense step, for a param p with grad g (any shape), lr a, momentum mu, weight decay wd:

    g <- g + wd * p                          (L2 weight decay folded into the gradient)
    buf <- mu * buf + g                      (only when mu > 0; buf starts at 0)
    d = g + mu * buf  if nesterov  else  buf (d = g when mu == 0)
    p <- p - a * d

the PyTorch convention (buf after the first step equals g).

Row-sparse step (`sparse_mode="lazy"`, the default), for a grad RowSparseGrad(rows (N,),
values (N, D...)) coalesced to U unique rows r (duplicates summed): the same three lines are
applied to rows r only (p[r], buf[r], g[r]); every other row of p and of buf is left untouched.

- Without momentum and weight decay this equals the dense step on the densified gradient
  exactly (untouched rows have g = 0 and would not move anyway).
- Weight decay is applied to the touched rows only (untouched rows are not shrunk).
- Momentum is *lazy*: an untouched row's buffer neither decays nor moves its row. Dense momentum
  would keep moving a row for many steps after its last gradient (by a * mu^k * buf) and decay
  its buffer; with lazy momentum, when a row is touched again its buffer resumes from the value
  it had when last touched. This is the usual choice for embedding tables (cost proportional to
  the touched rows, not to V).

`sparse_mode="dense"` densifies row-sparse grads (`grad.to_dense`) and runs the dense step, for
exact dense-momentum semantics at the cost of O(V D) work per step.
No kernel: plain array expressions on `backend.xp`.
"""
from __future__ import annotations

from ..options import Option, in_range, parse_float
from .base import Optimizer, common_options


class SGD(Optimizer):
    """SGD(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None,
    schedule=None, sparse_mode="lazy")."""

    name = "sgd"
    OPTIONS = common_options(0.1) + (
        Option("momentum", parse_float, 0.0, "SGD momentum", check=in_range(0, 1)),
        Option("nesterov", default=False, switch=True, help="Nesterov momentum (needs "
               "--momentum > 0)"),
    )

    def __init__(self, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None,
                 schedule=None, sparse_mode="lazy"):
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if nesterov and float(momentum) == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slots = ("momentum",) if self.momentum > 0 else ()
        super().__init__(lr, weight_decay=weight_decay, clip_norm=clip_norm, schedule=schedule,
                         sparse_mode=sparse_mode)

    def _direction(self, grad, buf):
        """The momentum update of `buf` (in place) and the step direction."""
        mu = self.momentum
        buf *= mu
        buf += grad
        if self.nesterov:
            grad += mu * buf
            return grad
        return buf

    def _update_dense(self, key, param, grad, lr):
        if self.weight_decay:
            grad += self.weight_decay * param
        direction = grad
        if self.momentum:
            direction = self._direction(grad, self._buffer("momentum", key, param))
        param -= lr * direction

    def _update_rows(self, key, param, rows_u, values_ud, lr):
        grad = values_ud
        if self.weight_decay:
            grad += self.weight_decay * param[rows_u]
        direction = grad
        if self.momentum:
            buf = self._buffer("momentum", key, param)
            buf_rows = buf[rows_u]
            direction = self._direction(grad, buf_rows)
            buf[rows_u] = buf_rows
        param[rows_u] -= lr * direction  # rows are unique: fancy-index -= is exact

    def config(self):
        cfg = super().config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg
