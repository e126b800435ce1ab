"""The factored state of the exact large-sparse-target output (docs/factored.md).

W (D, d) is never stored: W = V U + 1 a^T, with V (D, d), U (d, d), a (d,) (a = 0 and absent
unless the loss uses s = sum(o)), plus Uinv_T = U^{-T} (d, d), Q = W^T W (d, d) and, when the
loss uses s, wbar = W^T 1 (d,). All arrays live on the backend (`xp` = NumPy or CuPy) inside
the layer's `params` dict, so checkpoints round-trip them.

One exact SGD step (`sgd_step`), with H (B, d), r folded into the per-example derivatives
(gq, gs (B,), gc (B, K) at rows `ids` (B K,)), dh = G W (B, d) and GG = G G^T (B, B) for the
minibatch gradient G = dL/dO (B, D) (never formed), learning rate eta and L2 decay lam
(s_ = 1 - eta lam):
    W_new = W - eta (G^T H + lam W) = W M - eta 1 (H^T gs)^T - eta Ydot^T H,
    M = s_ (I + H^T A H),  A = diag(-2 eta gq / s_)
    U <- U M                               O(d^2 B)
    a <- M a - eta H^T gs                   (only with s)
    Uinv <- (1/s_) (Uinv - H^T A Y),  Y = (I_B + H H^T A)^{-1} H Uinv   (Woodbury; B = 1 is
            Sherman-Morrison; `inverse="solve"` re-inverts U_new instead, O(d^3))
    V[c] <- V[c] - eta gc (Y / s_)[j]       rows named by the targets only: O(B K d)
    Q <- s_^2 Q - eta s_ (dh^T H + H^T dh) + eta^2 H^T GG H
    wbar <- s_ wbar - eta H^T (G 1)
Numerical care (docs/factored.md, "Numerical care"): `monitors()`, `recompute_Q()`, `reinvert()`, `fix_band()` (rank-1
fixes of U's singular values, W and Q unchanged) and `unfactorize()` (V <- V U, U <- I), all
O(D d^2) or O(d^3), run every few steps by the layer. Row gathers and scatters go through
engine/outputs/factored.py (NumPy/numba on the CPU, rawkernels/factored_rows.cu on the GPU).
"""
from __future__ import annotations

import numpy


class SingularStepError(ValueError):
    """The requested learning rate would make U (nearly) singular; nothing was changed."""


def init_state(W0: numpy.ndarray, uses_s: bool) -> dict:
    """Host float64 state for W = W0: V = W0, U = I, Uinv_T = I, Q = W0^T W0 [, a = 0, wbar]."""
    W0 = numpy.asarray(W0, dtype=numpy.float64)
    d = W0.shape[1]
    state = {"V": W0.copy(), "U": numpy.eye(d), "Uinv_T": numpy.eye(d), "Q": W0.T @ W0}
    if uses_s:
        state["a"] = numpy.zeros(d)
        state["wbar"] = W0.sum(axis=0)
    return state


def step_matrix(xp, H, gq, eta, lam):
    """(A (B,), I_B + H H^T A (B, B), s_, C = H H^T) of one step."""
    s_ = 1.0 - eta * lam
    if not s_ > 0:
        raise SingularStepError(f"factored: weight decay with learning rate {eta} gives "
                                f"1 - lr * weight_decay = {s_} <= 0; lower the learning rate")
    A = (-2.0 * eta / s_) * gq
    C = H @ H.T
    Mb = C * A[None, :]
    Mb += xp.eye(H.shape[0], dtype=H.dtype)
    return A, Mb, s_, C


def check_step(backend, Mb, s_, eta, guard_min, A, C):
    """Raise SingularStepError when I + H^T A H (whose non-unit eigenvalues are those of the
    B x B `Mb`) has an eigenvalue of real part below `guard_min` (a step that makes U singular,
    or passes through singular and flips it), or when 1 - eta lam <= 0.
    Small host transfers (B x B): a host synchronisation on the GPU."""
    if not s_ > 0:
        raise SingularStepError(f"factored: weight decay with learning rate {eta} gives "
                                f"1 - lr * weight_decay = {s_} <= 0; lower the learning rate")
    Ah = backend.to_host(A).astype(numpy.float64)
    if Ah.size and numpy.all(Ah <= 0):
        # A <= 0 (g_q >= 0: squared, spherical, Taylor): the eigenvalues of I + C A are those of
        # the symmetric I - S C S, S = sqrt(-A); a Cholesky of it minus guard_min I decides.
        S = numpy.sqrt(-Ah)
        Ms = numpy.eye(Ah.size) - S[:, None] * backend.to_host(C).astype(numpy.float64) * S[None, :]
        try:
            numpy.linalg.cholesky(Ms - guard_min * numpy.eye(Ah.size))
            return
        except numpy.linalg.LinAlgError:
            pass
    ev = numpy.linalg.eigvals(backend.to_host(Mb).astype(numpy.float64))
    low = float(ev.real.min()) if ev.size else 1.0
    if not low >= guard_min:
        raise SingularStepError(
            f"factored: learning rate {eta} would make U (nearly) singular: the update "
            f"U <- U (I - 2 lr H^T diag(g_q) H) has an eigenvalue of real part {low:.3g} "
            f"(< guard {guard_min}); the step was refused and nothing changed. Lower the "
            f"factored layer's learning rate (2 lr g_q ||h||^2 must stay well below 1).")


def sgd_step(st, xp, H, ids, gc, gq, gs, G1, dh, GG, eta, lam, A, Mb, s_, scatter,
             inverse="woodbury", HU=None):
    """Apply one exact SGD step to the state dict `st` in place (see the module docstring).
    `scatter(V, ids, coef (N,), rows (B, d), K)` adds coef[n] rows[n // K] to V[ids[n]].
    `HU` = H U^T from the forward pass (saves one d^2 B product). Seven d^2 B products in all
    (with the forward's two and backward's one: ten per step)."""
    U, Uinv_T = st["U"], st["Uinv_T"]
    if HU is None:
        HU = H @ U.T
    if inverse == "woodbury":
        Y = xp.linalg.solve(Mb, H @ Uinv_T.T)                   # (I + C A)^{-1} H U^{-1}
        Hhat = Y * (1.0 / s_) if s_ != 1.0 else Y                # H U_new^{-1}
    elif inverse != "solve":
        raise ValueError(f"factored: inverse must be 'woodbury' or 'solve', got {inverse!r}")
    if "a" in st:
        a = st["a"]
        a_new = s_ * (a + H.T @ (A * (H @ a))) - eta * (H.T @ gs)
        a[...] = a_new
        st["wbar"] *= s_
        st["wbar"] -= eta * (H.T @ G1)
    U += (HU.T * A[None, :]) @ H                                # U (I + H^T A H)
    if s_ != 1.0:
        U *= s_
    if inverse == "woodbury":
        # Uinv_new^T = (1/s_) (Uinv - H^T A Y)^T = (1/s_) (Uinv_T - Y^T A H)
        Uinv_T -= Y.T @ (A[:, None] * H)
        if s_ != 1.0:
            Uinv_T *= 1.0 / s_
    else:
        Uinv_T[...] = xp.linalg.inv(U).T
        Hhat = H @ Uinv_T.T
    K = gc.shape[1]
    scatter(st["V"], ids, (-eta) * gc.reshape(-1), Hhat, K)
    # Q <- s_^2 Q + H^T X + X^T H with X = -eta s_ dh + (eta^2 / 2) GG H   (GG symmetric)
    X = GG @ H
    X *= 0.5 * eta * eta
    X -= (eta * s_) * dh
    Q = st["Q"]
    HX = H.T @ X
    if s_ != 1.0:
        Q *= s_ * s_
    Q += HX
    Q += HX.T


# ----------------------------------------------------------------- numerical care
def exact_Q(st, xp):
    """W^T W from V, U, a: O(D d^2)."""
    U = st["U"]
    VtV = st["V"].T @ st["V"]
    Q = U.T @ VtV @ U
    if "a" in st:
        a = st["a"]
        vU = st["V"].sum(axis=0) @ U
        D = st["V"].shape[0]
        Q = Q + xp.outer(vU, a) + xp.outer(a, vU) + D * xp.outer(a, a)
    return 0.5 * (Q + Q.T)


def monitors(st, xp):
    """{'q_rel_err': ||W^T W - Q|| / ||Q||, 'inv_err': ||U U^{-1} - I||, ['wbar_rel_err']} as
    floats (host sync)."""
    d = st["U"].shape[0]
    Qx = exact_Q(st, xp)
    out = {"q_rel_err": float(xp.linalg.norm(Qx - st["Q"]) / max(float(xp.linalg.norm(Qx)), 1e-300)),
           "inv_err": float(xp.linalg.norm(st["U"] @ st["Uinv_T"].T - xp.eye(d, dtype=st["U"].dtype)))}
    if "wbar" in st:
        wb = exact_wbar(st, xp)
        out["wbar_rel_err"] = float(xp.linalg.norm(wb - st["wbar"]) /
                                    max(float(xp.linalg.norm(wb)), 1e-300))
    return out


def probe_monitors(st, xp, rng, probes=4):
    """Cheap monitors for large D: ||U U^{-1} - I|| exactly (O(d^3)), and the error of Q seen
    through `probes` random directions Z (d, p): ||Z^T Q Z - (W Z)^T (W Z)|| / ||(W Z)^T (W Z)||
    with W Z = V (U Z) + 1 (a^T Z), O(D d p) instead of the O(D d^2) of `monitors`. A drift of
    Q shows in Z^T (Q - W^T W) Z for almost every Z; a flagged probe leads to the exact
    recomputation anyway. wbar is checked exactly (O(D d)). Floats (host sync)."""
    U = st["U"]
    d = U.shape[0]
    Z = xp.asarray(rng.standard_normal((d, probes)), dtype=U.dtype)
    WZ = st["V"] @ (U @ Z)
    if "a" in st:
        WZ += st["a"] @ Z
    exact = WZ.T @ WZ
    est = Z.T @ st["Q"] @ Z
    out = {"q_rel_err": float(xp.linalg.norm(est - exact) / max(float(xp.linalg.norm(exact)), 1e-300)),
           "inv_err": float(xp.linalg.norm(U @ st["Uinv_T"].T - xp.eye(d, dtype=U.dtype))),
           "q_check": "probe"}
    if "wbar" in st:
        wb = exact_wbar(st, xp)
        out["wbar_rel_err"] = float(xp.linalg.norm(wb - st["wbar"]) /
                                    max(float(xp.linalg.norm(wb)), 1e-300))
    return out


def exact_wbar(st, xp):
    return st["V"].sum(axis=0) @ st["U"] + st["V"].shape[0] * st["a"]


def recompute_Q(st, xp):
    st["Q"][...] = exact_Q(st, xp)
    if "wbar" in st:
        st["wbar"][...] = exact_wbar(st, xp)


def reinvert(st, xp):
    st["Uinv_T"][...] = xp.linalg.inv(st["U"]).T


def unfactorize(st, xp):
    """V <- V U, U <- I, Uinv_T <- I (W unchanged): O(D d^2)."""
    st["V"][...] = st["V"] @ st["U"]
    d = st["U"].shape[0]
    st["U"][...] = xp.eye(d, dtype=st["U"].dtype)
    st["Uinv_T"][...] = xp.eye(d, dtype=st["U"].dtype)


def fix_band(st, xp, lo=0.5, hi=2.0, unfactorize_fraction=1.0 / 3.0):
    """Bring U's singular values back into [lo, hi] (W = V U + 1 a^T and Q unchanged).

    Each singular value sigma_i outside the band (left singular vector u_i) is set to 1 by
    U <- (I + alpha u u^T) U, V <- V (I + beta u u^T), 1 + alpha = 1 / sigma_i,
    beta = -alpha / (1 + alpha) (O(D d) each). When more than `unfactorize_fraction` of them are
    outside, unfactorize instead. Returns 'none', 'fixed:<n>' or 'unfactorized' (host sync)."""
    U = st["U"]
    P, sig, _ = xp.linalg.svd(U)
    sig_h = numpy.asarray(sig.get() if hasattr(sig, "get") else sig)
    bad = numpy.nonzero((sig_h < lo) | (sig_h > hi))[0]
    if bad.size == 0:
        return "none"
    if bad.size > unfactorize_fraction * sig_h.size:
        unfactorize(st, xp)
        return "unfactorized"
    V = st["V"]
    for i in bad:
        u = P[:, int(i)]
        alpha = 1.0 / float(sig_h[i]) - 1.0
        beta = -alpha / (1.0 + alpha)
        U += alpha * xp.outer(u, u @ U)
        V += beta * xp.outer(V @ u, u)
    reinvert(st, xp)
    return f"fixed:{bad.size}"
