"""Label-sharded exact factored output layer (W = V U + 1 a^T; engine/outputs/factored.py).

Shapes: N ranks; rank r owns rows [s_r, e_r) of V (L_r of the D outputs, shard.py); the d x d
state U, U^{-T}, Q = W^T W (and a, wbar = W^T 1 for losses that use s) is replicated, every
rank holding the same numbers. h (B_r, d), targets (B_r,) or (B_r, K) padded with -1.

Per step, around the single-process layer's own code:
    H = allgather(h) (B, d), T = allgather(targets) (B, K)
    Vc = allreduce SUM of the target rows V[T] each rank owns (zero rows elsewhere): every
         target row comes from exactly one rank, so Vc (B, K, d) is exactly the single-process
         gather; this is the only data the sharding adds (B K d numbers; K = 1 for a language
         model, where it equals the size of h)
    forward, backward (dh (B, d), the B x B terms GG, the learning-rate guard) and the update of
    U, U^{-T}, Q, a, wbar then run unchanged on every rank on the same replicated inputs, so
    they stay identical and the update stays exact; V's target rows are updated by their
    owner only (the targets of other ranks get a zero coefficient); dh is this rank's rows of
    the replicated (B, d) result (no reduction needed).
Moved per step: B d (N-1)/N for h, B K d for Vc (float32: 4 B d (N-1)/N + 4 B K d bytes).

Numerical care over all shards: ||W^T W - Q|| and wbar need sums over all of V's rows; each
rank forms its d x d (and d-wide) partial sums, all-reduced (`_exact_Q`, `_exact_wbar`,
probe monitors through Z^T W^T W Z). Decisions taken from them (re-invert, recompute Q, fix
U's singular values, unfactorize) are the same on every rank; the rank-1 fixes and the
unfactorisation touch V's rows locally (engine/outputs/factored_state.py works on any rows).

Initial state: V = this rank's rows of the single-process draw (shard.uniform_rows), U = I,
and Q = W0^T W0, wbar = W0^T 1 as all-reduced partial sums.
"""
from __future__ import annotations

import numpy

from ..layers.base import OutputLayer
from ..outputs import factored_state as fs
from ..outputs.factored import (FactoredOutput, FactoredSphericalOutput, FactoredSquaredOutput,
                                FactoredTaylorOutput, FactoredZLossOutput, gather_target_rows)
from ..outputs.xmc_metrics import DEFAULT_KS, TopK, metric_sums
from .shard import ShardedOutput, uniform_rows


class ShardedFactoredOutput(ShardedOutput, FactoredOutput):
    sharded_params = ("V",)

    def __init__(self, in_features: int, num_classes: int, comm=None, **kwargs):
        FactoredOutput.__init__(self, in_features, num_classes, **kwargs)
        self._init_shard(comm, num_classes, f"factored-{self.loss_name}")

    # -- state ----------------------------------------------------------------------------------
    def init_params(self, rng):
        d, D = self.in_features, self.num_classes
        a = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(d)
        W0 = uniform_rows(rng, a, D, d, self.label_start, self.label_stop)
        if self.use_bias:                      # the bias column starts at 0 (FactoredOutput)
            W0 = numpy.concatenate([W0, numpy.zeros((W0.shape[0], 1))], axis=1)
        state = fs.init_state(W0, self.loss.uses_s)
        state["Q"] = self.comm.allreduce(state["Q"], "sum")
        if "wbar" in state:
            state["wbar"] = self.comm.allreduce(state["wbar"], "sum")
        return state

    def dense_weight(self):
        """This rank's rows of W = V U + 1 a^T, host (L_r, d), without the bias column."""
        return FactoredOutput.dense_weight(self)

    # -- the target rows come from their owners ------------------------------------------------
    def _terms(self, h, t2, valid):
        """(HU, Vc (B, K, d), o_c (B, K), HQ, q, s) of the global rows, as the single-process
        layer computes them; Vc all-reduced from the owners' rows."""
        xp, p = self.backend.xp, self.params
        B, K = t2.shape
        HU = h @ p["U"].T
        owned = valid & (t2 >= self.label_start) & (t2 < self.label_stop)
        ids = xp.where(owned, t2 - self.label_start, 0).reshape(-1)
        Vc = gather_target_rows(self.backend, p["V"], ids, owned).reshape(B, K, -1)
        Vc = self.comm.allreduce(Vc, "sum", inplace=True)
        oc = (Vc * HU[:, None, :]).sum(axis=2)
        if "a" in p:
            oc = oc + (h @ p["a"])[:, None]
        HQ = h @ p["Q"]
        q = (HQ * h).sum(axis=1)
        s = h @ p["wbar"] if "wbar" in p else None
        return HU, Vc, oc, HQ, q, s

    def forward(self, h, targets, train=True):
        """Loss of the global minibatch (every rank the same)."""
        H, T = self.gather_rows(h, targets)
        return FactoredOutput.forward(self, H, T, train)

    def backward(self, dy=None):
        """dh (B_r, d): this rank's rows of the replicated dh."""
        return self.own_rows(FactoredOutput.backward(self, dy))

    def apply_update(self, lr):
        """The exact update; V's scatter touches only the target rows this rank owns."""
        if self._pending is None:
            raise RuntimeError("factored.apply_update called without a backward()")
        xp = self.backend.xp
        h, ids, gc, *rest = self._pending
        owned = (ids >= self.label_start) & (ids < self.label_stop)
        local_ids = xp.where(owned, ids - self.label_start, 0)
        local_gc = gc * owned.reshape(gc.shape)
        self._pending = (h, local_ids, local_gc, *rest)
        FactoredOutput.apply_update(self, lr)

    # -- numerical care over all shards ----------------------------------------------------------
    def _exact_Q(self):
        st, xp = self.params, self.backend.xp
        U = st["U"]
        VtV = self.comm.allreduce(st["V"].T @ st["V"], "sum")
        Q = U.T @ VtV @ U
        if "a" in st:
            a = st["a"]
            vU = self.comm.allreduce(st["V"].sum(axis=0), "sum") @ U
            Q = Q + xp.outer(vU, a) + xp.outer(a, vU) + self.num_classes * xp.outer(a, a)
        return 0.5 * (Q + Q.T)

    def _exact_wbar(self):
        st = self.params
        return (self.comm.allreduce(st["V"].sum(axis=0), "sum") @ st["U"]
                + self.num_classes * st["a"])

    def _recompute_Q(self):
        self.params["Q"][...] = self._exact_Q()
        if "wbar" in self.params:
            self.params["wbar"][...] = self._exact_wbar()

    def _monitors(self, exact):
        """fs.monitors / fs.probe_monitors with the sums over V's rows all-reduced."""
        st, xp = self.params, self.backend.xp
        U = st["U"]
        d = U.shape[0]
        if exact:
            Qx = self._exact_Q()
            out = {"q_rel_err": float(xp.linalg.norm(Qx - st["Q"])
                                      / max(float(xp.linalg.norm(Qx)), 1e-300))}
        else:
            Z = xp.asarray(self._probe_rng.standard_normal((d, self.monitor_probes)),
                           dtype=U.dtype)
            WZ = st["V"] @ (U @ Z)
            if "a" in st:
                WZ += st["a"] @ Z
            exact_zz = self.comm.allreduce(WZ.T @ WZ, "sum")
            est = Z.T @ st["Q"] @ Z
            out = {"q_rel_err": float(xp.linalg.norm(est - exact_zz)
                                      / max(float(xp.linalg.norm(exact_zz)), 1e-300)),
                   "q_check": "probe"}
        out["inv_err"] = float(xp.linalg.norm(U @ st["Uinv_T"].T - xp.eye(d, dtype=U.dtype)))
        if "wbar" in st:
            wb = self._exact_wbar()
            out["wbar_rel_err"] = float(xp.linalg.norm(wb - st["wbar"])
                                        / max(float(xp.linalg.norm(wb)), 1e-300))
        return out

    def _numerical_care(self):
        xp, n, st = self.backend.xp, self.updates, self.params
        if self.reinvert_every and n % self.reinvert_every == 0:
            fs.reinvert(st, xp)
        if self.recompute_q_every and n % self.recompute_q_every == 0:
            self._recompute_Q()
        if self.check_every and n % self.check_every == 0:
            self.run_checks()

    def run_checks(self, exact: bool | None = None):
        """FactoredOutput.run_checks over all shards (same thresholds, same decisions on every
        rank: they are taken from all-reduced numbers)."""
        xp, st = self.backend.xp, self.params
        eps = numpy.finfo(self.dtype).eps
        q_tol = self.q_tol if self.q_tol is not None else 1e3 * eps
        inv_tol = self.inv_tol if self.inv_tol is not None else 1e3 * eps
        if exact is None:
            exact = self.monitor == "exact"
        mon = self._monitors(exact)
        self.last_monitors = mon
        band = fs.fix_band(st, xp, self.band[0], self.band[1], self.unfactorize_fraction)
        if band != "none":
            self.events.append((self.updates, band))
        if band == "unfactorized":
            self._recompute_Q()
        elif band == "none" and mon["inv_err"] > inv_tol:
            fs.reinvert(st, xp)
            self.events.append((self.updates, "reinverted"))
        if band != "unfactorized" and max(mon["q_rel_err"], mon.get("wbar_rel_err", 0.0)) > q_tol:
            self._recompute_Q()
            self.events.append((self.updates, "recomputed Q"))
        return mon

    # -- evaluation ----------------------------------------------------------------------------
    def loss_per_example(self, h, targets):
        H, T = self.gather_rows(h, targets)
        return self.own_rows(FactoredOutput.loss_per_example(self, H, T))

    def log_prob(self, h, targets):
        H, T = self.gather_rows(h, targets)
        return self.own_rows(FactoredOutput.log_prob(self, H, T))

    def eval_sums(self, h, targets, ks=DEFAULT_KS):
        """This rank's part of the minibatch sums (count and loss of its own rows, and with
        K-hot targets their ranking sums; the sum over ranks is the single-process sums)."""
        if self.has_likelihood and targets.ndim == 1:
            return OutputLayer.eval_sums(self, h, targets)
        per_example = self.loss_per_example(h, targets).astype(numpy.float64).sum()
        if self.reduction == "sum":        # as the single-process layer: forward() x rows
            per_example = per_example * sum(self._row_counts)
        sums = {"count": h.shape[0], "loss": per_example}
        if targets.ndim == 2:              # multi-label: this rank's rows of the top-k
            ids, _ = self.predict_topk(h, max(ks))
            sums.update(metric_sums(self.backend.xp, ids, targets, self._inv_prop, ks))
        return sums

    def predict_topk(self, h, k: int, chunk_size=None):
        """Best k outputs of this rank's rows, over every shard's rows of V."""
        p = self.params
        H, _ = self.gather_rows(h)
        H = self._with_one(H)
        chunk = max(int(chunk_size or self.topk_chunk), 1)
        HU = H @ p["U"].T
        ha = (H @ p["a"])[:, None] if "a" in p else 0.0
        top = TopK(self.backend, H.shape[0], int(min(k, self.local_labels)), self.dtype)
        for start in range(0, self.local_labels, chunk):
            stop = min(start + chunk, self.local_labels)
            top.add(self._score(HU @ p["V"][start:stop].T + ha), self.label_start + start)
        ids, vals = top.result()
        ids, vals = self.merge_topk(ids, vals, k)
        return self.own_rows(ids), self.own_rows(vals)


class ShardedFactoredSquaredOutput(ShardedFactoredOutput, FactoredSquaredOutput):
    state_name = "FactoredSquaredOutput"
    default_loss = "squared"


class ShardedFactoredSphericalOutput(ShardedFactoredOutput, FactoredSphericalOutput):
    state_name = "FactoredSphericalOutput"
    default_loss = "spherical"


class ShardedFactoredTaylorOutput(ShardedFactoredOutput, FactoredTaylorOutput):
    state_name = "FactoredTaylorOutput"
    default_loss = "taylor"


class ShardedFactoredZLossOutput(ShardedFactoredOutput, FactoredZLossOutput):
    state_name = "FactoredZLossOutput"
    default_loss = "zloss"


__all__ = ["ShardedFactoredOutput", "ShardedFactoredSquaredOutput",
           "ShardedFactoredSphericalOutput", "ShardedFactoredTaylorOutput",
           "ShardedFactoredZLossOutput"]
