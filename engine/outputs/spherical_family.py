"""The spherical family of losses (docs/factored.md, "The spherical family"): L_j(q_j, s_j, o_c) per example.

A member only sees, per example j, q = ||o_j||^2, s = sum(o_j) and the target outputs
o_c (B, K) (a -1 padded target has valid = False and must contribute nothing). It returns
the per-example loss (B,) and the partial derivatives g_q = dL/dq (B,), g_s = dL/ds (B,)
(only when `uses_s`) and g_c = dL/do_c (B, K) (zero where not valid). Both the factored layer
(engine/outputs/factored.py) and the dense reference (engine/outputs/spherical_dense.py) use
these, so they compare like with like. All functions are array expressions on `xp`
(NumPy or CuPy): no kernel, no host synchronisation.

Shapes: B batch, K targets per example (a K-hot target sums the per-target terms; a label named
twice counts twice), D outputs (needed by the normalisers).

Members (`make_loss(name, **kw)`):
  squared   l = ||o - y||^2 = q - 2 sum_k o_ck + ||y||^2          (y K-hot with multiplicities)
  spherical l = sum_k [-log(o_ck^2 + eps) + log(q + D eps)]
  taylor    l = sum_k [-log f(o_ck) + log(D + s + q/2)],  f(o) = 1 + o + o^2/2
  zloss     l = sum_k softplus(a (b - z_ck)) / a,  z = (o - s/D) / sigma, sigma^2 = q/D - (s/D)^2

A new member subclasses SphericalLoss and defines `value_and_grads` (a few lines).
"""
from __future__ import annotations

import inspect

from ..options import Option, greater_than, parse_float, parse_str


class SphericalLoss:
    """Base class. `uses_s`: the loss depends on s (the layer then keeps W^T 1 up to date)."""

    name = "base"
    uses_s = False
    has_likelihood = False

    def value_and_grads(self, xp, q, s, oc, valid, D, extra=None):
        """-> (loss (B,), g_q (B,), g_s (B,) or None, g_c (B, K)). `extra` is what
        `prepare(targets)` returned (used by squared for ||y||^2)."""
        raise NotImplementedError

    def prepare(self, xp, t2, valid):
        """Per-minibatch constants that depend on the targets only."""
        return None

    def log_prob(self, xp, q, s, oc, D):
        """log p(c) for one target per row, (B,) q, s and (B,) o_c (likelihood members only)."""
        raise NotImplementedError(f"{self.name}: no likelihood")

    def config(self):
        return {}


class SquaredLoss(SphericalLoss):
    name = "squared"

    def prepare(self, xp, t2, valid):
        # ||y||^2 with multiplicities: number of (k, k') pairs naming the same valid label
        same = (t2[:, :, None] == t2[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        return same.sum(axis=(1, 2))

    def value_and_grads(self, xp, q, s, oc, valid, D, extra=None):
        v = valid.astype(q.dtype)
        loss = q - 2.0 * (oc * v).sum(axis=1) + extra.astype(q.dtype)
        return loss, xp.ones_like(q), None, -2.0 * v


class SphericalSoftmaxLoss(SphericalLoss):
    name = "spherical"
    has_likelihood = True

    def __init__(self, eps: float = 1e-3):
        if not eps > 0:
            raise ValueError(f"spherical: eps must be > 0, got {eps}")
        self.eps = float(eps)

    def value_and_grads(self, xp, q, s, oc, valid, D, extra=None):
        v = valid.astype(q.dtype)
        n = v.sum(axis=1)
        num = oc * oc + self.eps
        z = q + D * self.eps
        loss = -(xp.log(num) * v).sum(axis=1) + n * xp.log(z)
        return loss, n / z, None, -2.0 * oc / num * v

    def log_prob(self, xp, q, s, oc, D):
        return xp.log(oc * oc + self.eps) - xp.log(q + D * self.eps)

    def config(self):
        return {"eps": self.eps}


class TaylorSoftmaxLoss(SphericalLoss):
    name = "taylor"
    uses_s = True
    has_likelihood = True

    def value_and_grads(self, xp, q, s, oc, valid, D, extra=None):
        v = valid.astype(q.dtype)
        n = v.sum(axis=1)
        f = 1.0 + oc + 0.5 * oc * oc
        z = D + s + 0.5 * q
        loss = -(xp.log(f) * v).sum(axis=1) + n * xp.log(z)
        return loss, 0.5 * n / z, n / z, -(1.0 + oc) / f * v

    def log_prob(self, xp, q, s, oc, D):
        return xp.log(1.0 + oc + 0.5 * oc * oc) - xp.log(D + s + 0.5 * q)


class ZLoss(SphericalLoss):
    name = "zloss"
    uses_s = True

    def __init__(self, a: float = 0.1, b: float = 10.0):
        if not a > 0:
            raise ValueError(f"zloss: a must be > 0, got {a}")
        self.a, self.b = float(a), float(b)

    def value_and_grads(self, xp, q, s, oc, valid, D, extra=None):
        v = valid.astype(q.dtype)
        mu = s / D
        var = q / D - mu * mu
        sigma = xp.sqrt(xp.maximum(var, 1e-30 if q.dtype.itemsize == 8 else 1e-20))
        z = (oc - mu[:, None]) / sigma[:, None]
        t = self.a * (self.b - z)
        loss = (xp.logaddexp(0.0, t) / self.a * v).sum(axis=1)
        dz = -0.5 * (1.0 + xp.tanh(0.5 * t)) * v                    # dL/dz = -sigmoid(t)
        g_c = dz / sigma[:, None]
        # dz/dq = -z / (2 D sigma^2);  dz/ds = -1/(D sigma) + z mu / (D sigma^2)
        g_q = (dz * (-z)).sum(axis=1) / (2.0 * D * var)
        g_s = (dz.sum(axis=1) * (-1.0 / (D * sigma))
               + (dz * z).sum(axis=1) * mu / (D * var))
        return loss, g_q, g_s, g_c

    def config(self):
        return {"a": self.a, "b": self.b}


LOSSES = {"squared": SquaredLoss, "spherical": SphericalSoftmaxLoss,
          "taylor": TaylorSoftmaxLoss, "zloss": ZLoss}


#: Options of the layers built on this family (factored-*, *-dense): the loss, and the keyword
#: arguments of the losses that take any (they go into the layer's `loss_kwargs`).
LOSS_OPTIONS = (
    Option("loss", parse_str, None, "the spherical-family loss", choices=tuple(LOSSES)),
    Option("spherical_eps", parse_float, 1e-3, "spherical loss: eps in -log(o^2 + eps)",
           part_of="loss_kwargs", key="eps", when=("loss", ("spherical",)),
           check=greater_than(0)),
    Option("zloss_a", parse_float, 0.1, "z-loss: the softplus sharpness a",
           part_of="loss_kwargs", key="a", when=("loss", ("zloss",)), check=greater_than(0)),
    Option("zloss_b", parse_float, 10.0, "z-loss: the margin b", part_of="loss_kwargs", key="b",
           when=("loss", ("zloss",))),
)


def make_loss(name: str, **kwargs) -> SphericalLoss:
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown spherical-family loss {name!r}; choose from {sorted(LOSSES)}") from None
    params = (inspect.signature(cls.__init__).parameters.values()
              if cls.__init__ is not object.__init__ else ())
    takes = [p.name for p in params if p.name != "self" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(k for k in kwargs if k not in takes)
    if unknown:     # one line naming them, rather than the constructor's TypeError
        raise ValueError(f"the {name} loss takes {'no arguments' if not takes else ', '.join(takes)}"
                         f"; got {', '.join(unknown)}")
    return cls(**kwargs)


def targets_and_mask(xp, targets, batch, num_classes):
    """(B,) or (B, K) int targets -> (t2 (B, K) with -1 replaced by 0, valid (B, K) bool).
    Raises ValueError on a bad shape or an id >= num_classes (or < -1)."""
    if targets.ndim == 1:
        targets = targets.reshape(-1, 1)
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(f"targets must be (B,) or (B, K) with B = {batch}, got {tuple(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer ids, got {targets.dtype}")
    valid = targets >= 0
    t2 = xp.where(valid, targets, 0).astype(xp.int64)
    return t2, valid


__all__ = ["SphericalLoss", "SquaredLoss", "SphericalSoftmaxLoss", "TaylorSoftmaxLoss", "ZLoss",
           "LOSSES", "make_loss", "targets_and_mask"]
