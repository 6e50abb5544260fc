"""The ``torch`` engine: the grid start and Levenberg-Marquardt for all rows of a chunk at once (torch).

The reference implementation of :mod:`tokenscale.fit.problem`'s iteration, and the fallback on CPU (no C
compiler) and GPU (no Triton).  It runs unchanged on CPU and CUDA.  One evaluation (SSE from explicit
residuals, gradient and 2x2 Hessian of every row) is ~20 elementwise passes over the (rows, K) chunk written
into preallocated scratch buffers (:class:`Workspace`) plus two batched row sums; rows that finish leave the
working set at once (an active set), and after ``DEFER_AFTER`` iterations a chunk's unfinished rows are
handed back to be pooled with later chunks' (:func:`lm`; :mod:`tokenscale.fit.chunks` does the pooling).

The grid start (:func:`grid_start`) and the per-row start state (:func:`start_rows`) are also what the
Triton engine starts from.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tokenscale.fit.problem import (
    MU0,
    MU_ACCEPT,
    MU_GROW,
    MU_MAX,
    MU_MIN,
    MU_REJECT,
    STEP_CAP_RHO,
    STEP_CAP_TAU,
    Problem,
)

__all__ = ["TorchProblem", "Workspace", "grid_start", "closed_form", "start_rows", "new_out", "cat_rows", "lm"]


class TorchProblem(Problem):
    """A :class:`~tokenscale.fit.problem.Problem` whose arrays ``t``, ``U``, ``grid_tau``, ``grid_rho`` are
    tensors on the compute ``device`` in the compute ``dtype`` (what every engine reads), plus the dtype's
    round-off constants and the packing used for the grid argmax."""

    def __init__(self, x: np.ndarray, tau_margin, lam_bounds, grid_shape, delta_max, device, dtype):
        super().__init__(x, tau_margin, lam_bounds, grid_shape, delta_max)
        self.device, self.dtype = device, dtype
        self.t = torch.as_tensor(self.t, dtype=dtype, device=device)
        self.negt = -self.t
        self.U = torch.as_tensor(self.U, dtype=dtype, device=device).contiguous()
        g_count = self.grid_tau.size
        self.grid_tau = torch.as_tensor(self.grid_tau, dtype=dtype, device=device)
        self.grid_rho = torch.as_tensor(self.grid_rho, dtype=dtype, device=device)
        # argmax over the grid by packing the grid index into the low mantissa bits of C^2 (>= 0, so
        # its int32 bit pattern is monotone): one vectorised integer max instead of a slow argmax.
        self.pack_bits = max(1, int(g_count - 1).bit_length())
        self.pack = dtype == torch.float32 and self.pack_bits <= 12
        if self.pack:
            self.pack_mask = (1 << self.pack_bits) - 1
            self.grid_idx = torch.arange(g_count, dtype=torch.int32, device=device)[None, :]
        eps = torch.finfo(dtype).eps
        self.eps = eps
        self.gvar_rel = 64.0 * eps  # var(g) below this fraction of sum(g^2) is round-off: g ~ const


class Workspace:
    """Scratch buffers of one chunk (reused across iterations and chunks: no allocation per op)."""

    def __init__(self, n: int, k: int, device, dtype):
        self.n = n
        self.Z = torch.empty((n, k), dtype=dtype, device=device)
        self.R = torch.empty((n, k), dtype=dtype, device=device)
        # stacked planes (j, row, K): every plane [j, :m] is contiguous, one sum reduces them all
        self.A = torch.empty((3, n, k), dtype=dtype, device=device)
        self.F = torch.empty((13, n, k), dtype=dtype, device=device)

    @staticmethod
    def ensure(ws: "Workspace | None", n: int, k: int, device, dtype) -> "Workspace":
        if ws is None or ws.n < n:
            return Workspace(max(n, 1), k, device, dtype)
        return ws


# ----------------------------------------------------------------------------- numerics
# rows of the stacked per-row evaluation returned by _evaluate
_SSE, _DELTA, _GBAR, _B0, _B1, _H00, _H01, _H11 = range(8)


def _basis(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: TorchProblem,
           ws: Workspace):
    """Basis ``b`` and the closed-form ``delta`` at theta; fills ``ws.Z`` (z), ``ws.A[0]`` (b), ``ws.A[1]``
    (b^2) and ``ws.R`` (residual).  Returns (lam, sl, pos, bbar, inv_var, clamped, delta) (n,) tensors.

    The basis is ``b = sigmoid(s * z)`` with ``z = lam' (tau' - t)`` and ``s = -1`` when ``tau' > 0`` (then
    ``b = 1 - g``, which is small over most of the window and keeps full relative precision);
    span{1, b} = span{1, g}, so only the bookkeeping of ``delta``/``gbar`` changes.  Where the
    unconstrained ``|delta|`` exceeds ``dmax`` it is clamped (``post`` stays optimal).
    """
    m, k = Yc.shape
    lam = torch.exp(rho)
    pos = tau > 0
    sl = torch.where(pos, -lam, lam)  # s * lam'
    Z = ws.Z[:m]
    torch.mul(sl[:, None], P.negt, out=Z)
    Z.add_((sl * tau)[:, None])  # z = s lam' (tau' - t)
    A = ws.A[:, :m]
    B = A[0]
    torch.sigmoid(Z, out=B)
    torch.mul(B, B, out=A[1])
    torch.mul(Yc, B, out=A[2])
    sb, sbb, syb = A.sum(2).unbind(0)
    bbar = sb * (1.0 / k)
    var = sbb - sb * bbar
    okv = var > P.gvar_rel * sbb + 1e-30
    inv_var = torch.where(okv, torch.where(okv, var, 1.0).reciprocal(), 0.0)
    delta = syb * inv_var
    clamped = delta.abs() > dmax
    delta = torch.where(clamped, torch.copysign(dmax, delta), delta)
    R = ws.R[:m]
    torch.mul(B, delta[:, None], out=R)
    torch.sub(Yc, R, out=R)
    R.add_((delta * bbar)[:, None])  # r = Yc - delta (b - bbar)
    return lam, sl, pos, bbar, inv_var, clamped, delta


def _evaluate(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: TorchProblem,
              ws: Workspace) -> torch.Tensor:
    """Closed-form (post, delta) and reduced-problem derivatives at theta = (tau', rho) for all rows.

    Yc: (n, K) centred rows.  tau, rho, dmax: (n,), ``|delta| <= dmax``.  Returns an (8, n) tensor with
    rows ``sse, delta, gbar, b0, b1, h00, h01, h11`` (indices ``_SSE`` ...) where ``b = J^T r`` and ``H``
    is the exact Hessian of the reduced problem where that is positive definite, else Kaufman's
    Gauss-Newton matrix (both halved), for the residual ``r = P_perp(theta) y``; the fitted curve is
    ``ybar + delta * (g - gbar)`` (so ``post = ybar - delta * gbar``).  ``sse`` is summed from the explicit
    residuals (no cancellation).  With ``delta`` clamped the gradient is the partial derivative at fixed
    ``delta`` and the Jacobian only projects out the constant.

    Cost: about twenty elementwise passes over the (n, K) chunk, all into preallocated buffers of
    ``ws``, and two batched row sums (every reduction over K is one ``sum`` over a stacked buffer).
    """
    m, k = Yc.shape
    lam, sl, pos, bbar, inv_var, clamped, delta = _basis(Yc, tau, rho, dmax, P, ws)
    Z, B, R = ws.Z[:m], ws.A[0, :m], ws.R[:m]
    F = ws.F[:, :m]
    W = F[0]
    torch.sub(B, ws.A[1, :m], out=W)  # w = b (1 - b) = db/dz
    ZW = F[1]
    torch.mul(Z, W, out=ZW)
    torch.mul(B, W, out=F[2])
    torch.mul(B, ZW, out=F[3])
    torch.mul(W, W, out=F[4])
    torch.mul(ZW, W, out=F[5])
    torch.mul(ZW, ZW, out=F[6])
    torch.mul(R, W, out=F[7])
    torch.mul(R, ZW, out=F[8])
    torch.mul(R, R, out=F[9])
    W2R = F[10]
    torch.add(W, F[2], alpha=-2.0, out=W2R)  # d2b/dz2 = w (1 - 2b)
    W2R.mul_(R)
    torch.mul(Z, W2R, out=F[11])
    torch.mul(Z, F[11], out=F[12])
    (sw, szw, sbw, szbw, sww, szww, szzww, swr, szwr, srr, sw2r, szw2r, szzw2r) = F.sum(2).unbind(0)
    # db/dtau' = s lam' w, db/drho = z w
    lam2 = lam * lam
    a0 = sl * sw  # sum of db/dtau'
    a1 = szw  # sum of db/drho
    c0 = sl * sbw - bbar * a0  # (db_k . b_c)
    c1 = szbw - bbar * a1
    p00 = lam2 * sww - a0 * a0 * (1.0 / k)  # (db_k)_c . (db_l)_c
    p01 = sl * szww - a0 * a1 * (1.0 / k)
    p11 = szzww - a1 * a1 * (1.0 / k)
    e0 = sl * swr  # r . db_k
    e1 = szwr
    free = torch.where(clamped, 0.0, inv_var)
    d2 = delta * delta
    # Kaufman's Gauss-Newton matrix and the exact Hessian of the reduced problem (both halved)
    m0 = e0 - delta * c0
    m1 = e1 - delta * c1
    q00 = d2 * p00
    q01 = d2 * p01
    q11 = d2 * p11
    df = d2 * free
    kh00 = q00 - df * c0 * c0
    kh01 = q01 - df * c0 * c1
    kh11 = q11 - df * c1 * c1
    xh00 = q00 - m0 * m0 * free - delta * lam2 * sw2r
    xh01 = q01 - m0 * m1 * free - delta * sl * (swr + szw2r)
    xh11 = q11 - m1 * m1 * free - delta * (szwr + szzw2r)
    exact = (xh00 > 0) & (xh11 > 0) & (xh00 * xh11 - xh01 * xh01 > 1e-3 * xh00 * xh11)
    out = torch.stack([
        srr,
        torch.where(pos, -delta, delta),  # back to the g = sigmoid(lam' (tau' - t)) parameterisation
        torch.where(pos, 1.0 - bbar, bbar),
        -delta * e0,
        -delta * e1,
        torch.where(exact, xh00, kh00).clamp_min_(0.0),
        torch.where(exact, xh01, kh01),
        torch.where(exact, xh11, kh11).clamp_min_(0.0),
    ])
    return out


def _evaluate_sse(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: TorchProblem,
                  ws: Workspace):
    """(sse, delta, gbar) at theta without derivatives (a third of the cost of :func:`_evaluate`)."""
    m = Yc.shape[0]
    lam, sl, pos, bbar, inv_var, clamped, delta = _basis(Yc, tau, rho, dmax, P, ws)
    sse = torch.linalg.vector_norm(ws.R[:m], dim=1).square_()
    return sse, torch.where(pos, -delta, delta), torch.where(pos, 1.0 - bbar, bbar)


def closed_form(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: TorchProblem):
    """(sse, delta, gbar) at theta without derivatives (allocating; used off the hot path)."""
    ws = Workspace(Yc.shape[0], Yc.shape[1], Yc.device, Yc.dtype)
    return _evaluate_sse(Yc, tau, rho, dmax, P, ws)


def _free_mask(tau, rho, b0, b1, P: TorchProblem):
    """Coordinates not pinned at a bound by a gradient pointing out of the box."""
    f0 = ~(((tau <= P.tlo) & (b0 > 0)) | ((tau >= P.thi) & (b0 < 0)))
    f1 = ~(((rho <= P.rlo) & (b1 > 0)) | ((rho >= P.rhi) & (b1 < 0)))
    return f0, f1


def _solve2(h00, h01, h11, b0, b1, mu, f0, f1, eps):
    """Solve (H + mu*diag(H)) d = -b on the free coordinates (fixed ones get d = 0)."""
    tiny = eps * (h00 + h11) + 1e-30
    A00 = torch.where(f0, h00 + mu * torch.maximum(h00, tiny), 1.0)
    A11 = torch.where(f1, h11 + mu * torch.maximum(h11, tiny), 1.0)
    A01 = torch.where(f0 & f1, h01, 0.0)
    r0 = torch.where(f0, -b0, 0.0)
    r1 = torch.where(f1, -b1, 0.0)
    det = A00 * A11 - A01 * A01
    ok = det > 1e-4 * A00 * A11  # else (round-off / near-collinear): solve the diagonal system
    inv = torch.where(ok, det, 1.0).reciprocal()
    pos0 = A00 > 0
    pos1 = A11 > 0
    s0 = torch.where(ok, (A11 * r0 - A01 * r1) * inv, r0 / torch.where(pos0, A00, 1.0))
    s1 = torch.where(ok, (A00 * r1 - A01 * r0) * inv, r1 / torch.where(pos1, A11, 1.0))
    return torch.where(pos0, s0, 0.0), torch.where(pos1, s1, 0.0)


def _capped_step(tau, rho, s0, s1, P: TorchProblem):
    """theta + s with the step scaled into the per-step caps, then projected onto the bounds."""
    scale = torch.maximum(s0.abs() * (1.0 / STEP_CAP_TAU), s1.abs() * (1.0 / STEP_CAP_RHO)).clamp_min_(1.0)
    inv = scale.reciprocal_()
    return (tau + s0 * inv).clamp_(P.tlo, P.thi), (rho + s1 * inv).clamp_(P.rlo, P.rhi)


def grid_start(Yc: torch.Tensor, P: TorchProblem, refine: bool = True):
    """Best start-grid point of every row (one matmul), refined by a quadratic fit of the 3x3 stencil.

    Returns (tau', rho) start tensors (n,).
    """
    C = torch.matmul(Yc, P.U)  # (n, G): y_c . u_j; SSE at grid point j = ||y_c||^2 - C_j^2
    C.square_()
    if P.pack:
        Ci = C.view(torch.int32)
        Ci.bitwise_and_(~P.pack_mask).bitwise_or_(P.grid_idx)
        best = Ci.amax(dim=1).bitwise_and_(P.pack_mask).long()
    else:
        best = C.argmax(dim=1)
    tau = P.grid_tau[best]
    rho = P.grid_rho[best]
    if not refine or P.n_tau < 3:
        return tau, rho
    nt, nl = P.n_tau, P.n_lam
    it = torch.div(best, nl, rounding_mode="floor")
    ir = best - it * nl
    itp = (it + 1).clamp_max(nt - 1)
    itm = (it - 1).clamp_min(0)
    q0 = C.gather(1, best[:, None])[:, 0]
    qtp = C.gather(1, (itp * nl + ir)[:, None])[:, 0]
    qtm = C.gather(1, (itm * nl + ir)[:, None])[:, 0]
    # maximise Q = C^2: Newton step of the stencil's quadratic, in grid units, per coordinate unless the
    # 2-D model is concave; clipped to +-1 cell (the maximum of the grid is at most a cell away).
    gt = 0.5 * (qtp - qtm)
    ht = qtp - 2.0 * q0 + qtm
    in_t = (it > 0) & (it < nt - 1)
    st = torch.where(in_t & (ht < 0), -gt / torch.where(ht < 0, ht, -1.0), 0.0)
    if nl >= 3:
        irp = (ir + 1).clamp_max(nl - 1)
        irm = (ir - 1).clamp_min(0)
        qrp = C.gather(1, (it * nl + irp)[:, None])[:, 0]
        qrm = C.gather(1, (it * nl + irm)[:, None])[:, 0]
        qpp = C.gather(1, (itp * nl + irp)[:, None])[:, 0]
        qpm = C.gather(1, (itp * nl + irm)[:, None])[:, 0]
        qmp = C.gather(1, (itm * nl + irp)[:, None])[:, 0]
        qmm = C.gather(1, (itm * nl + irm)[:, None])[:, 0]
        gr = 0.5 * (qrp - qrm)
        hr = qrp - 2.0 * q0 + qrm
        htr = 0.25 * (qpp - qpm - qmp + qmm)
        in_r = (ir > 0) & (ir < nl - 1)
        sr = torch.where(in_r & (hr < 0), -gr / torch.where(hr < 0, hr, -1.0), 0.0)
        det = ht * hr - htr * htr
        both = in_t & in_r & (ht < 0) & (det > 0)
        inv = torch.where(both, det, 1.0).reciprocal()
        st2 = -(hr * gt - htr * gr) * inv
        sr2 = -(ht * gr - htr * gt) * inv
        st = torch.where(both, st2, st)
        sr = torch.where(both, sr2, sr)
        rho = rho + sr.clamp(-1.0, 1.0) * P.grid_dr
    tau = tau + st.clamp(-1.0, 1.0) * P.grid_dt
    return tau.clamp(P.tlo, P.thi), rho.clamp(P.rlo, P.rhi)


_ROW_KEYS = ("idx", "Yc", "X")  # X: (6, n) rows tau', rho, dmax, floor, mu, it
_TAU, _RHO, _DMAX, _FLOOR, _MU, _IT = range(6)


def lm(rows: dict, P: TorchProblem, ws: Workspace, out: dict, max_iter: int, tol: float,
       defer_after: int | None) -> dict | None:
    """Levenberg-Marquardt on the reduced problem for all ``rows`` at once.

    ``rows`` holds per-row state: ``idx`` (block-local row numbers), centred rows ``Yc`` (n, K), and
    ``X`` (6, n): ``tau'``/``rho`` (start or resume point), ``dmax``, the SSE round-off ``floor``, the LM
    damping ``mu`` and the per-row iteration count ``it``.  Each iteration tests convergence on the
    current point (Gauss-Newton decrement ``<= tol * sse + floor``), then tries one damped step per row
    (one :func:`_evaluate` of all unfinished rows), accepting it where the SSE went down.  Rows that
    finish (converged, or ``it`` reached ``max_iter``) are written to the block-level tensors of ``out``
    at ``idx`` and leave the working set in the same step (the working set is compacted, so later
    iterations only touch unfinished rows).  A converged row takes its final undamped step too: the
    SSE (only) is evaluated there and the step is kept where it is lower - this polish costs a third of
    an iteration and typically removes the remaining ``<= tol`` gap altogether.  When ``defer_after``
    iterations are done the unfinished rows' state is returned (to be resumed together with the
    stragglers of other chunks, so the tail of a few slow rows costs per-op overhead once per pool, not
    once per chunk); ``None`` when every row finished.
    """
    idx, Yc, X = rows["idx"], rows["Yc"], rows["X"]
    n = idx.shape[0]
    if n == 0:
        return None
    st = _evaluate(Yc, X[_TAU], X[_RHO], X[_DMAX], P, ws)
    done = None
    step = 0
    while True:
        tau, rho, mu, it = X[_TAU], X[_RHO], X[_MU], X[_IT]
        sse, b0, b1 = st[_SSE], st[_B0], st[_B1]
        f0, f1 = _free_mask(tau, rho, b0, b1, P)
        # Gauss-Newton decrement: predicted SSE decrease of the undamped step on the free coordinates
        g0, g1 = _solve2(st[_H00], st[_H01], st[_H11], b0, b1, 0.0, f0, f1, P.eps)
        dec = -(g0 * b0 + g1 * b1)
        conv = (dec <= tol * sse + X[_FLOOR]) | (mu > MU_MAX)
        if done is not None:
            conv |= done
        fin = conv | (it >= max_iter)
        fi = fin.nonzero()[:, 0]
        n_fin = fi.shape[0]
        if n_fin:
            _finish(fi, conv, g0, g1, idx, Yc, X, st, P, ws, out)
            if n_fin == n:
                return None
            keep = (~fin).nonzero()[:, 0]
            idx, Yc, X, st = idx[keep], Yc[keep], X[:, keep], st[:, keep]
            f0, f1 = f0[keep], f1[keep]
            n -= n_fin
        if defer_after is not None and step >= defer_after:
            return {"idx": idx, "Yc": Yc, "X": X}
        X, st, done = _damped_step(Yc, X, st, f0, f1, P, ws)
        step += 1


def _finish(fi, conv, g0, g1, idx, Yc, X, st, P: TorchProblem, ws: Workspace, out: dict) -> None:
    """Write the finished rows ``fi`` of the working set to ``out`` at their block rows, after the polish: the
    final undamped step ``(g0, g1)``, kept where it lowers the SSE."""
    sel = idx[fi]
    st_f = st[:, fi]
    t_f, r_f = X[_TAU, fi], X[_RHO, fi]
    t_n, r_n = _capped_step(t_f, r_f, g0[fi], g1[fi], P)
    sse_n, del_n, gb_n = _evaluate_sse(Yc[fi], t_n, r_n, X[_DMAX, fi], P, ws)
    better = sse_n < st_f[_SSE]
    out["tau"][sel] = torch.where(better, t_n, t_f)
    out["rho"][sel] = torch.where(better, r_n, r_f)
    out["sse"][sel] = torch.where(better, sse_n, st_f[_SSE])
    out["delta"][sel] = torch.where(better, del_n, st_f[_DELTA])
    out["gbar"][sel] = torch.where(better, gb_n, st_f[_GBAR])
    out["status"][sel] = torch.where(conv[fi], 0, 1).to(torch.int8)
    out["n_iter"][sel] = X[_IT, fi].to(torch.int32)


def _next_mu(mu: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """The damping after a step: lowered (not below ``MU_MIN``) where it was accepted, raised (to at least
    ``MU_REJECT``) where it was rejected."""
    return torch.where(acc, (mu * MU_ACCEPT).clamp_min_(MU_MIN), (mu * MU_GROW).clamp_min_(MU_REJECT))


def _damped_step(Yc, X, st, f0, f1, P: TorchProblem, ws: Workspace):
    """One damped LM step of every row of the working set: the new state ``X``, evaluation ``st`` (the step's
    where it lowered the SSE, else the old one) and the rows whose rejected step did not move theta."""
    tau, rho, mu, it = X[_TAU], X[_RHO], X[_MU], X[_IT]
    sse = st[_SSE]
    s0, s1 = _solve2(st[_H00], st[_H01], st[_H11], st[_B0], st[_B1], mu, f0, f1, P.eps)
    tau_n, rho_n = _capped_step(tau, rho, s0, s1, P)
    st_n = _evaluate(Yc, tau_n, rho_n, X[_DMAX], P, ws)
    acc = st_n[_SSE] < sse  # NaN-safe: NaN compares False
    # a rejected step that does not move theta: nothing left to gain at this precision
    done = ~acc & ((tau_n - tau).abs() <= 4 * P.eps * (1 + tau.abs())) & (
        (rho_n - rho).abs() <= 4 * P.eps * (1 + rho.abs())
    )
    st = torch.where(acc, st_n, st)
    X = torch.stack([
        torch.where(acc, tau_n, tau),
        torch.where(acc, rho_n, rho),
        X[_DMAX],
        X[_FLOOR],
        _next_mu(mu, acc),
        it + 1.0,
    ])
    return X, st, done


def cat_rows(parts: list[dict]) -> dict:
    return {"idx": torch.cat([p["idx"] for p in parts]), "Yc": torch.cat([p["Yc"] for p in parts]),
            "X": torch.cat([p["X"] for p in parts], dim=1)}


def new_out(n: int, dev, dt) -> dict:
    return {
        "tau": torch.full((n,), math.nan, dtype=dt, device=dev),
        "rho": torch.full((n,), math.nan, dtype=dt, device=dev),
        "sse": torch.full((n,), math.nan, dtype=dt, device=dev),
        "delta": torch.full((n,), math.nan, dtype=dt, device=dev),
        "gbar": torch.full((n,), math.nan, dtype=dt, device=dev),
        "ybar": torch.empty((n,), dtype=dt, device=dev),
        "sst": torch.empty((n,), dtype=dt, device=dev),
        "status": torch.full((n,), 2, dtype=torch.int8, device=dev),
        "n_iter": torch.zeros((n,), dtype=torch.int32, device=dev),
    }


def start_rows(Y: torch.Tensor, lo: int, hi: int, P: TorchProblem, out: dict, refine: bool) -> dict | None:
    """Prepare rows lo:hi of Y: centring, validity, per-row constants, grid start.  None if all invalid."""
    dev, dt = Y.device, Y.dtype
    k = Y.shape[1]
    Yb = Y[lo:hi]
    ybar = Yb.mean(dim=1)
    out["ybar"][lo:hi] = ybar
    finite = torch.isfinite(ybar)  # a non-finite entry makes the row mean non-finite
    idx = torch.arange(lo, hi, device=dev)
    if not bool(finite.all()):
        idx = idx[finite]
        Yb = Yb[finite]
        ybar = ybar[finite]
    m = idx.shape[0]
    if m == 0:
        return None
    Yc = Yb - ybar[:, None]
    out["sst"][idx] = torch.linalg.vector_norm(Yc, dim=1).square_()
    mn, mx = torch.aminmax(Yb, dim=1)
    rng = mx - mn
    tau, rho = grid_start(Yc, P, refine)
    X = torch.stack([
        tau,
        rho,
        P.delta_max * rng,
        16.0 * k * (P.eps * (ybar.abs() + rng + 1.0)) ** 2,
        torch.full((m,), MU0, dtype=dt, device=dev),
        torch.zeros((m,), dtype=dt, device=dev),
    ])
    return {"idx": idx, "Yc": Yc, "X": X}
