"""Dense spherical-family output: the naive O(B D d) reference of the factored layer.

Shapes: h (B, d), W (D, d), O = h W^T (B, D) formed whole, targets (B,) or (B, K) padded with -1.
Per-example loss l_j(q_j, s_j, o_c) from engine/outputs/spherical_family.py (q = ||o_j||^2,
s = sum(o_j)); forward returns the mean over the batch (`reduction="mean"`) or the sum.

Gradients: dO = r (g_s 1^T + 2 diag(g_q) O + Ydot) with Ydot holding g_c at the targets
(duplicates accumulate), r = 1/B or 1; dW = dO^T h, dh = dO W; with `bias`, O = h W^T + 1 b^T and
db = dO^T 1 (the factored layer's `bias` is the same model: a constant 1 appended to h). Registered as "spherical-dense" (loss="spherical"), "taylor-dense", "zloss-dense".
It is also the naive side of tools/bench_factored.py for the spherical losses.
"""
from __future__ import annotations

from ..layers.base import OutputLayer
from ..options import bias_option, init_scale_option, reduction_option, with_defaults
from .spherical_family import LOSS_OPTIONS, make_loss, targets_and_mask


class SphericalDenseOutput(OutputLayer):
    default_loss = "spherical"
    OPTIONS = with_defaults(LOSS_OPTIONS + (reduction_option(), init_scale_option(),
                                            bias_option(False)),
                            loss="spherical")
    TARGETS = ("one", "many")

    def __init__(self, in_features: int, num_classes: int, loss: str | None = None,
                 loss_kwargs: dict | None = None, reduction: str = "mean",
                 init_scale: float | None = None, bias: bool = False):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"spherical-dense: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.loss_name = loss or self.default_loss
        self.loss_kwargs = dict(loss_kwargs or {})
        self.loss = make_loss(self.loss_name, **self.loss_kwargs)
        self.has_likelihood = self.loss.has_likelihood
        self.reduction, self.init_scale, self.use_bias = reduction, init_scale, bool(bias)
        self._cache = None

    def scores(self, h):
        """O = h W^T (+ b), (B, D)."""
        O = h @ self.params["W"].T
        if self.use_bias:
            O += self.params["b"]
        return O

    def _terms(self, h, targets):
        xp = self.backend.xp
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"spherical-dense: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        t2, valid = targets_and_mask(xp, targets, h.shape[0], self.num_classes)
        O = self.scores(h)
        q = (O * O).sum(axis=1)
        s = O.sum(axis=1)
        oc = xp.take_along_axis(O, t2, axis=1)
        extra = self.loss.prepare(xp, t2, valid)
        return O, t2, valid, q, s, oc, extra

    def forward(self, h, targets, train=True):
        xp = self.backend.xp
        O, t2, valid, q, s, oc, extra = self._terms(h, targets)
        loss, g_q, g_s, g_c = self.loss.value_and_grads(xp, q, s, oc, valid, self.num_classes, extra)
        r = 1.0 if self.reduction == "sum" else 1.0 / h.shape[0]
        self._cache = (h, O, t2, g_q, g_s, g_c, r) if train else None
        self.last_loss_rows = loss
        return loss.sum() * r

    def backward(self, dy=None):
        if self._cache is None:
            raise RuntimeError("spherical-dense.backward called without a forward(train=True)")
        h, O, t2, g_q, g_s, g_c, r = self._cache
        self._cache = None
        xp = self.backend.xp
        G = O
        G *= (2.0 * r) * g_q[:, None]
        if g_s is not None:
            G += (r * g_s)[:, None]
        rows = xp.broadcast_to(xp.arange(h.shape[0])[:, None], t2.shape)
        flat = (rows * self.num_classes + t2).astype(xp.int64).reshape(-1)
        self.backend.scatter_add_rows(G.reshape(-1, 1), flat, (r * g_c).reshape(-1, 1))
        self.grads["W"] = G.T @ h
        if self.use_bias:
            self.grads["b"] = G.sum(axis=0)
        return G @ self.params["W"]

    def loss_per_example(self, h, targets):
        xp = self.backend.xp
        O, t2, valid, q, s, oc, extra = self._terms(h, targets)
        return self.loss.value_and_grads(xp, q, s, oc, valid, self.num_classes, extra)[0]

    def log_prob(self, h, targets):
        xp = self.backend.xp
        O, t2, valid, q, s, oc, extra = self._terms(h, targets)
        return self.loss.log_prob(xp, q, s, oc[:, 0], self.num_classes)

    def predict_topk(self, h, k: int):
        scores = self.scores(h)
        if self.loss_name == "spherical":
            scores = scores * scores                 # p_c grows with o_c^2
        elif self.loss_name == "taylor":
            scores = 1.0 + scores + 0.5 * scores * scores
        k = int(min(k, self.num_classes))
        vals, ids = self.backend.topk(scores, k)          # best first, ties to the lower id
        return ids, vals

    def config(self):
        return {"in_features": self.in_features, "num_classes": self.num_classes,
                "loss": self.loss_name, "loss_kwargs": self.loss_kwargs,
                "reduction": self.reduction, "init_scale": self.init_scale, "bias": self.use_bias}


class TaylorDenseOutput(SphericalDenseOutput):
    default_loss = "taylor"
    OPTIONS = with_defaults(SphericalDenseOutput.OPTIONS, loss="taylor")


class ZLossDenseOutput(SphericalDenseOutput):
    default_loss = "zloss"
    OPTIONS = with_defaults(SphericalDenseOutput.OPTIONS, loss="zloss")
