"""The ``triton`` engine: the fused GPU kernel of the fit's Levenberg-Marquardt stage (Triton).

The torch engine (:func:`tokenscale.fit.engines.torch_lm.lm`) launches ~150 small kernels per LM iteration,
each a full pass over the (rows, K) chunk in GPU memory.  This kernel runs the same algorithm - the reduced
(variable-projection) problem over ``theta = (tau', rho = log lam')``, closed-form ``(post, delta)``,
Kaufman's Gauss-Newton matrix or the exact reduced Hessian, per-row damping, projection onto the box, the
same convergence test and final undamped polish step - for a block of ``BM`` rows per program with the
rows' K points held in registers: one launch per chunk, the chunk read from memory once.  A block iterates
until its last row has finished (finished rows are masked, their results frozen).  It starts from the torch
engine's grid start (:func:`~tokenscale.fit.engines.torch_lm.start_rows`); the bounds come in a small tensor
and the LM constants of :mod:`tokenscale.fit.problem` as ``constexpr`` arguments.

It is used on CUDA when Triton is importable (``engine="auto"`` or ``"triton"``).  With
``TRITON_INTERPRET=1`` set before Python starts, Triton's interpreter runs it on CPU tensors, which is how
the tests check it on machines without a GPU.
"""

from __future__ import annotations

import os

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
)

__all__ = ["available", "interpreted", "lm"]

try:  # pragma: no cover - depends on the installation
    import triton
    import triton.language as tl

    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any import failure means: not available
    triton = tl = None
    _IMPORT_ERROR = " ".join(str(e).split()) or type(e).__name__

def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> str | None:
    """None if the kernel can run on ``device``, else the reason it cannot."""
    if triton is None:
        return f"triton is not importable ({_IMPORT_ERROR})"
    if device.type == "cuda" or (device.type == "cpu" and interpreted()):
        return None
    return f"the triton engine runs on CUDA (or on CPU under TRITON_INTERPRET=1), got device {str(device)!r}"


if triton is not None:

    @triton.jit
    def _basis(y, t2, cmask, tau, rho, dmax, gvar_rel, inv_k):
        # b = sigmoid(s z), z = s lam' (tau' - t), s = -1 where tau' > 0 (see torch_lm._basis)
        lam = tl.exp(rho)
        pos = tau > 0
        sl = tl.where(pos, -lam, lam)
        z = sl[:, None] * (tau[:, None] - t2)
        b = 1.0 / (1.0 + tl.exp(-z))
        z = tl.where(cmask, z, 0.0)
        b = tl.where(cmask, b, 0.0)
        sb = tl.sum(b, 1)
        sbb = tl.sum(b * b, 1)
        syb = tl.sum(y * b, 1)
        bbar = sb * inv_k
        var = sbb - sb * bbar
        okv = var > gvar_rel * sbb + 1e-30
        inv_var = tl.where(okv, 1.0 / tl.where(okv, var, 1.0), 0.0)
        delta = syb * inv_var
        clamped = tl.abs(delta) > dmax
        delta = tl.where(clamped, tl.where(delta < 0, -dmax, dmax), delta)
        return z, b, lam, sl, pos, bbar, inv_var, clamped, delta

    @triton.jit
    def _evaluate_sse(y, t2, cmask, tau, rho, dmax, gvar_rel, inv_k):
        z, b, lam, sl, pos, bbar, inv_var, clamped, delta = _basis(y, t2, cmask, tau, rho, dmax, gvar_rel, inv_k)
        r = tl.where(cmask, y - delta[:, None] * (b - bbar[:, None]), 0.0)
        sse = tl.sum(r * r, 1)
        return sse, tl.where(pos, -delta, delta), tl.where(pos, 1.0 - bbar, bbar)

    @triton.jit
    def _evaluate(y, t2, cmask, tau, rho, dmax, gvar_rel, inv_k):
        z, b, lam, sl, pos, bbar, inv_var, clamped, delta = _basis(y, t2, cmask, tau, rho, dmax, gvar_rel, inv_k)
        r = tl.where(cmask, y - delta[:, None] * (b - bbar[:, None]), 0.0)
        w = b - b * b  # db/dz
        zw = z * w
        w2r = (w - 2.0 * b * w) * r  # d2b/dz2 * r
        sw = tl.sum(w, 1)
        szw = tl.sum(zw, 1)
        sbw = tl.sum(b * w, 1)
        szbw = tl.sum(b * zw, 1)
        sww = tl.sum(w * w, 1)
        szww = tl.sum(zw * w, 1)
        szzww = tl.sum(zw * zw, 1)
        swr = tl.sum(r * w, 1)
        szwr = tl.sum(r * zw, 1)
        srr = tl.sum(r * r, 1)
        sw2r = tl.sum(w2r, 1)
        szw2r = tl.sum(z * w2r, 1)
        szzw2r = tl.sum(z * z * w2r, 1)
        lam2 = lam * lam
        a0 = sl * sw
        a1 = szw
        c0 = sl * sbw - bbar * a0
        c1 = szbw - bbar * a1
        p00 = lam2 * sww - a0 * a0 * inv_k
        p01 = sl * szww - a0 * a1 * inv_k
        p11 = szzww - a1 * a1 * inv_k
        e0 = sl * swr
        e1 = szwr
        fr = tl.where(clamped, 0.0, inv_var)
        d2 = delta * delta
        m0 = e0 - delta * c0
        m1 = e1 - delta * c1
        q00 = d2 * p00
        q01 = d2 * p01
        q11 = d2 * p11
        df = d2 * fr
        xh00 = q00 - m0 * m0 * fr - delta * lam2 * sw2r
        xh01 = q01 - m0 * m1 * fr - delta * sl * (swr + szw2r)
        xh11 = q11 - m1 * m1 * fr - delta * (szwr + szzw2r)
        exact = (xh00 > 0) & (xh11 > 0) & (xh00 * xh11 - xh01 * xh01 > 1e-3 * xh00 * xh11)
        h00 = tl.where(exact, xh00, q00 - df * c0 * c0)
        h01 = tl.where(exact, xh01, q01 - df * c0 * c1)
        h11 = tl.where(exact, xh11, q11 - df * c1 * c1)
        return (srr, tl.where(pos, -delta, delta), tl.where(pos, 1.0 - bbar, bbar), -delta * e0, -delta * e1,
                tl.maximum(h00, 0.0), h01, tl.maximum(h11, 0.0))

    @triton.jit
    def _solve2(h00, h01, h11, b0, b1, mu, f0, f1, eps):
        tiny = eps * (h00 + h11) + 1e-30
        A00 = tl.where(f0, h00 + mu * tl.maximum(h00, tiny), 1.0)
        A11 = tl.where(f1, h11 + mu * tl.maximum(h11, tiny), 1.0)
        A01 = tl.where(f0 & f1, h01, 0.0)
        r0 = tl.where(f0, -b0, 0.0)
        r1 = tl.where(f1, -b1, 0.0)
        det = A00 * A11 - A01 * A01
        ok = det > 1e-4 * A00 * A11
        inv = 1.0 / tl.where(ok, det, 1.0)
        pos0 = A00 > 0
        pos1 = A11 > 0
        s0 = tl.where(ok, (A11 * r0 - A01 * r1) * inv, r0 / tl.where(pos0, A00, 1.0))
        s1 = tl.where(ok, (A00 * r1 - A01 * r0) * inv, r1 / tl.where(pos1, A11, 1.0))
        return tl.where(pos0, s0, 0.0), tl.where(pos1, s1, 0.0)

    @triton.jit
    def _capped_step(tau, rho, s0, s1, tlo, thi, rlo, rhi, CAP_TAU: tl.constexpr, CAP_RHO: tl.constexpr):
        scale = tl.maximum(tl.maximum(tl.abs(s0) * (1.0 / CAP_TAU), tl.abs(s1) * (1.0 / CAP_RHO)), 1.0)
        inv = 1.0 / scale
        tn = tl.minimum(tl.maximum(tau + s0 * inv, tlo), thi)
        rn = tl.minimum(tl.maximum(rho + s1 * inv, rlo), rhi)
        return tn, rn

    @triton.jit
    def _free_mask(tau, rho, b0, b1, tlo, thi, rlo, rhi):
        # coordinates not pinned at a bound by a gradient pointing out of the box (torch_lm._free_mask)
        f0 = ((tau <= tlo) & (b0 > 0)) | ((tau >= thi) & (b0 < 0))
        f0 = f0 == 0
        f1 = ((rho <= rlo) & (b1 > 0)) | ((rho >= rhi) & (b1 < 0))
        f1 = f1 == 0
        return f0, f1

    @triton.jit
    def _next_mu(mu, acc, rej, MU_ACCEPT: tl.constexpr, MU_MIN: tl.constexpr, MU_GROW: tl.constexpr,
                 MU_REJECT: tl.constexpr):
        # the damping after an accepted / rejected step; unchanged where neither (finished rows)
        return tl.where(acc, tl.maximum(mu * MU_ACCEPT, MU_MIN), tl.where(rej, tl.maximum(mu * MU_GROW, MU_REJECT), mu))

    @triton.jit
    def _load_constants(S):
        # S: the real-valued constants in the compute dtype (scalar kernel arguments would be float32)
        return (tl.load(S + 0), tl.load(S + 1), tl.load(S + 2), tl.load(S + 3), tl.load(S + 4), tl.load(S + 5),
                tl.load(S + 6), tl.load(S + 7))

    @triton.jit
    def _store_rows(dst, rmask, O_TAU, O_RHO, O_SSE, O_DELTA, O_GBAR, O_STATUS, O_NITER,
                    o_tau, o_rho, o_sse, o_dlt, o_gb, o_st, o_it):
        tl.store(O_TAU + dst, o_tau, mask=rmask)
        tl.store(O_RHO + dst, o_rho, mask=rmask)
        tl.store(O_SSE + dst, o_sse, mask=rmask)
        tl.store(O_DELTA + dst, o_dlt, mask=rmask)
        tl.store(O_GBAR + dst, o_gb, mask=rmask)
        tl.store(O_STATUS + dst, o_st.to(tl.int8), mask=rmask)
        tl.store(O_NITER + dst, o_it, mask=rmask)

    @triton.jit
    def _lm_kernel(Y, ldy, T, TAU0, RHO0, DMAX, FLOOR, IDX, O_TAU, O_RHO, O_SSE, O_DELTA, O_GBAR, O_STATUS, O_NITER,
                   S, n, K, max_iter,
                   BM: tl.constexpr, KP: tl.constexpr, MU0: tl.constexpr, MU_REJECT: tl.constexpr,
                   MU_ACCEPT: tl.constexpr, MU_MIN: tl.constexpr, MU_GROW: tl.constexpr, MU_MAX: tl.constexpr,
                   CAP_TAU: tl.constexpr, CAP_RHO: tl.constexpr):
        inv_k, tlo, thi, rlo, rhi, tol, eps, gvar_rel = _load_constants(S)
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        rmask = rows < n
        cols = tl.arange(0, KP)
        cm = cols < K
        cmask = rmask[:, None] & cm[None, :]
        # y: (BM, KP) centred rows (padding columns and rows past n are 0 and masked out of every sum)
        y = tl.load(Y + rows[:, None].to(tl.int64) * ldy + cols[None, :], mask=cmask, other=0.0)
        t2 = tl.load(T + cols, mask=cm, other=0.0)[None, :]  # (1, KP)
        tau = tl.load(TAU0 + rows, mask=rmask, other=0.0)  # (BM,)
        rho = tl.load(RHO0 + rows, mask=rmask, other=0.0)
        dm = tl.load(DMAX + rows, mask=rmask, other=0.0)
        fl = tl.load(FLOOR + rows, mask=rmask, other=0.0)
        mu = tau * 0.0 + MU0
        it = tl.zeros([BM], dtype=tl.int32)
        done = rows < 0
        active = rmask
        sse, dlt, gb, b0, b1, h00, h01, h11 = _evaluate(y, t2, cmask, tau, rho, dm, gvar_rel, inv_k)
        o_tau = tau
        o_rho = rho
        o_sse = sse
        o_dlt = dlt
        o_gb = gb
        o_st = tl.zeros([BM], dtype=tl.int32)
        o_it = it
        n_active = tl.sum(active.to(tl.int32), 0)
        while n_active > 0:
            f0, f1 = _free_mask(tau, rho, b0, b1, tlo, thi, rlo, rhi)
            # Gauss-Newton decrement of the undamped step: the convergence test
            g0, g1 = _solve2(h00, h01, h11, b0, b1, mu * 0.0, f0, f1, eps)
            dec = -(g0 * b0 + g1 * b1)
            conv = (dec <= tol * sse + fl) | (mu > MU_MAX) | done
            fin = active & (conv | (it >= max_iter))
            if tl.sum(fin.to(tl.int32), 0) > 0:
                # polish: the final undamped step, kept where it lowers the SSE
                tn, rn = _capped_step(tau, rho, g0, g1, tlo, thi, rlo, rhi, CAP_TAU, CAP_RHO)
                sse_n, dlt_n, gb_n = _evaluate_sse(y, t2, cmask, tn, rn, dm, gvar_rel, inv_k)
                better = sse_n < sse
                o_tau = tl.where(fin, tl.where(better, tn, tau), o_tau)
                o_rho = tl.where(fin, tl.where(better, rn, rho), o_rho)
                o_sse = tl.where(fin, tl.where(better, sse_n, sse), o_sse)
                o_dlt = tl.where(fin, tl.where(better, dlt_n, dlt), o_dlt)
                o_gb = tl.where(fin, tl.where(better, gb_n, gb), o_gb)
                o_st = tl.where(fin, tl.where(conv, 0, 1), o_st)
                o_it = tl.where(fin, it, o_it)
                active = active & (fin == 0)
            # one damped step per unfinished row
            s0, s1 = _solve2(h00, h01, h11, b0, b1, mu, f0, f1, eps)
            tn, rn = _capped_step(tau, rho, s0, s1, tlo, thi, rlo, rhi, CAP_TAU, CAP_RHO)
            sse2, dlt2, gb2, b02, b12, h002, h012, h112 = _evaluate(y, t2, cmask, tn, rn, dm, gvar_rel, inv_k)
            acc = active & (sse2 < sse)
            rej = active & (acc == 0)
            # a rejected step that does not move theta: nothing left to gain at this precision
            done = rej & (tl.abs(tn - tau) <= 4.0 * eps * (1.0 + tl.abs(tau))) & (
                tl.abs(rn - rho) <= 4.0 * eps * (1.0 + tl.abs(rho)))
            sse = tl.where(acc, sse2, sse)
            dlt = tl.where(acc, dlt2, dlt)
            gb = tl.where(acc, gb2, gb)
            b0 = tl.where(acc, b02, b0)
            b1 = tl.where(acc, b12, b1)
            h00 = tl.where(acc, h002, h00)
            h01 = tl.where(acc, h012, h01)
            h11 = tl.where(acc, h112, h11)
            tau = tl.where(acc, tn, tau)
            rho = tl.where(acc, rn, rho)
            mu = _next_mu(mu, acc, rej, MU_ACCEPT, MU_MIN, MU_GROW, MU_REJECT)
            it = tl.where(active, it + 1, it)
            n_active = tl.sum(active.to(tl.int32), 0)
        dst = tl.load(IDX + rows, mask=rmask, other=0)
        _store_rows(dst, rmask, O_TAU, O_RHO, O_SSE, O_DELTA, O_GBAR, O_STATUS, O_NITER,
                    o_tau, o_rho, o_sse, o_dlt, o_gb, o_st, o_it)


def _block_rows(k: int) -> tuple[int, int, int]:
    """(rows per program, padded K, warps): ~2048 tile elements per program by default;
    ``TOKENSCALE_TRITON_BLOCK="rows,warps"`` overrides it (for tuning on a new GPU)."""
    kp = max(16, 1 << (max(k, 1) - 1).bit_length())
    bm, warps = max(1, min(64, 2048 // kp)), 4
    env = os.environ.get("TOKENSCALE_TRITON_BLOCK")
    if env:
        bm, warps = (int(v) for v in env.split(","))
    return bm, kp, warps


def lm(Yc: torch.Tensor, X: torch.Tensor, idx: torch.Tensor, P, opts: dict, out: dict) -> None:
    """Run the fused LM on the (m, K) centred rows ``Yc`` from the start ``X`` (the (6, m) state of
    :func:`tokenscale.fit.engines.torch_lm.start_rows`: tau', rho, dmax, floor, ...); results go to
    ``out[...][idx]``."""
    m, k = Yc.shape
    if m == 0:
        return
    if Yc.stride(1) != 1:
        Yc = Yc.contiguous()
    tau0, rho0, dmax, floor = (X[i].contiguous() for i in range(4))
    idx = idx.to(torch.int64).contiguous()
    bm, kp, warps = _block_rows(k)
    consts = torch.tensor([1.0 / k, P.tlo, P.thi, P.rlo, P.rhi, float(opts["tol"]), float(P.eps), float(P.gvar_rel)],
                          dtype=Yc.dtype, device=Yc.device)
    grid = (triton.cdiv(m, bm),)
    kwargs = {} if interpreted() else {"num_warps": warps}
    _lm_kernel[grid](
        Yc, Yc.stride(0), P.t, tau0, rho0, dmax, floor, idx,
        out["tau"], out["rho"], out["sse"], out["delta"], out["gbar"], out["status"], out["n_iter"],
        consts, m, k, int(opts["max_iter"]),
        BM=bm, KP=kp, MU0=MU0, MU_REJECT=MU_REJECT, MU_ACCEPT=MU_ACCEPT, MU_MIN=MU_MIN, MU_GROW=MU_GROW,
        MU_MAX=MU_MAX, CAP_TAU=STEP_CAP_TAU, CAP_RHO=STEP_CAP_RHO,
        **kwargs,
    )

