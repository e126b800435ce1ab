"""Dense squared error against a one-hot or K-hot target: the naive baseline.

Shapes: h (B, d), W (D, d), optional b (D,), O = h W^T + b (B, D), Y (B, D) with Y[b, t] = 1
for each target t of row b. Targets are (B,) int, or (B, K) int padded with -1 (K-hot;
a label named twice counts twice, as a sparse Y with a repeated entry would).

Per-example loss l_b = ||o_b - y_b||^2 (summed over all D outputs). `reduction="sum"` gives
the minibatch loss of the exact factored update (docs/factored.md), L = sum_b l_b, which the factored layer
must reproduce step for step; "mean" (the default) divides by B.

Gradients: dO = 2 (O - Y) * r (r = 1 or 1/B); dW = dO^T h, db = sum_b dO, dh = dO W.
This layer forms the whole B x D output on purpose: it is the O(B D d) reference.
"""
from __future__ import annotations


from ..layers.base import OutputLayer
from ..options import bias_option, init_scale_option, reduction_option


def targets_as_2d(xp, targets, batch):
    """(B,) or (B, K) int targets -> (B, K) with -1 padding; validates the shape."""
    if targets.ndim == 1:
        targets = targets.reshape(-1, 1)
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(f"targets must be (B,) or (B, K) with B = {batch}, got {tuple(targets.shape)}")
    return targets


class SquaredErrorOutput(OutputLayer):
    has_likelihood = False
    OPTIONS = (bias_option(False), reduction_option(), init_scale_option())
    TARGETS = ("one", "many")

    def __init__(self, in_features: int, num_classes: int, bias: bool = False,
                 reduction: str = "mean", init_scale: float | None = None):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"squared: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.use_bias, self.reduction, self.init_scale = bool(bias), reduction, init_scale
        self._cache = None

    def scores(self, h):
        """O = h W^T + b, (B, D)."""
        out = h @ self.params["W"].T
        if self.use_bias:
            out += self.params["b"]
        return out

    def _residual(self, h, targets):
        """O - Y (B, D), a fresh array."""
        xp = self.backend.xp
        t2 = targets_as_2d(xp, targets, h.shape[0])
        resid = self.scores(h)
        rows = xp.broadcast_to(xp.arange(h.shape[0])[:, None], t2.shape)
        valid = t2 >= 0
        # subtract Y with duplicates accumulated (a label named twice is a 2 in Y); ignored
        # (-1) entries add 0 to element 0 of their row, so no host sync is needed to drop them
        flat = (rows * self.num_classes + xp.where(valid, t2, 0)).astype(xp.int64).reshape(-1)
        self.backend.scatter_add_rows(resid.reshape(-1, 1), flat,
                                      -valid.astype(resid.dtype).reshape(-1, 1))
        return resid

    def forward(self, h, targets, train=True):
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"squared: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        resid = self._residual(h, targets)
        r = 1.0 if self.reduction == "sum" else 1.0 / h.shape[0]
        loss = (resid * resid).sum() * r
        self._cache = (h, resid, r) if train else None
        return loss

    def backward(self, dy=None):
        if self._cache is None:
            raise RuntimeError("squared.backward called without a forward(train=True)")
        h, resid, r = self._cache
        self._cache = None
        resid *= 2.0 * r                                   # dO
        self.grads["W"] = resid.T @ h
        if self.use_bias:
            self.grads["b"] = resid.sum(axis=0)
        return resid @ self.params["W"]

    def loss_per_example(self, h, targets):
        resid = self._residual(h, targets)
        return (resid * resid).sum(axis=1)

    def log_prob(self, h, targets):
        raise NotImplementedError("squared error defines no likelihood; use loss_per_example")

    def predict_topk(self, h, k: int):
        scores = self.scores(h)
        k = int(min(k, self.num_classes))
        vals, ids = self.backend.topk(scores, k)          # best first, ties to the lower id
        return ids, vals

    def config(self):
        return {"in_features": self.in_features, "num_classes": self.num_classes,
                "bias": self.use_bias, "reduction": self.reduction, "init_scale": self.init_scale}
