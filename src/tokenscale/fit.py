"""Batched sigmoid fits of token-loss trajectories (paper §3.2, eq. (1)-(2)).

Model, on a transformed axis ``x = f(a)`` (``log10`` by default; ``linear`` available)::

    loss(x) = post + delta * [1 - sigmoid(lam * (x - tau))] = post + delta * sigmoid(lam * (tau - x))

with ``lam >= 0`` so that the sign of ``delta`` gives the direction (``delta > 0``: the loss descends at
``tau``; ``delta < 0``: ascending / forgetting-like).  ``pre = post + delta``.  The learning pulse,
eq. (2), is ``-dloss/dx = delta*lam/4 * sech^2(lam*(x - tau)/2)``.

Algorithm (one batched algorithm over all rows; no per-row Python)
------------------------------------------------------------------
The model is linear in ``(post, delta)`` for fixed ``(tau, lam)``, so the fit is a *separable*
least-squares problem and is solved by variable projection over ``theta = (tau', log lam')`` where
``tau' = (tau - c)/h`` and ``lam' = lam*h`` live on the axis standardised to ``[-1, 1]``
(``c``, ``h``: centre and half-width of the observed transformed range):

1. **Grid start.**  For every point of a ``(tau, lam)`` grid the centred, unit-norm basis vector
   ``u = P1 g / ||P1 g||`` is precomputed once per axis (``P1`` removes the mean).  For a centred row
   ``y_c`` the SSE at that grid point with the optimal ``(post, delta)`` is ``||y_c||^2 - (y_c . u)^2``,
   so the best grid point of *all* rows is one matmul ``Y_c(N,K) @ U(K,G)`` and a max of its square
   (done as an integer max over the squares with the grid index packed into their low mantissa bits,
   ~5x cheaper than ``argmax``).  The start is then moved to the maximum of the quadratic through the
   3x3 grid neighbourhood (values already in the matmul's output), which saves about one iteration.
2. **Levenberg-Marquardt on the reduced problem** (Kaufman's variable-projection Jacobian, or the exact
   reduced Hessian where it is positive definite) for all rows at once, with per-row damping, per-row
   acceptance, an active set (rows that converged leave the working set at once) and per-element status
   codes, in the style of scipy's element-wise solvers.  ``(post, delta)`` are re-solved in closed form
   at every trial point.  Bounds ``tau in [x_min - tau_margin, x_max + tau_margin]`` and
   ``lam in lam_bounds`` are enforced by projection with an active set (a coordinate sitting on its
   bound with the gradient pointing out of the box is frozen for that step).  A row is ``converged``
   when the Gauss-Newton model predicts that no step can lower its SSE by more than ``tol * SSE`` (or
   the damping explodes because float round-off dominates any further progress).

One evaluation (SSE from explicit residuals, gradient and 2x2 Hessian of every row) is ~20 elementwise
passes over the (rows, K) chunk written into preallocated scratch buffers plus two batched row sums;
chunks are cache-sized (4096 rows on CPU).  A chunk runs at most ``_DEFER_AFTER`` iterations; rows still
unconverged then are pooled with those of later chunks and resumed together, so the long tail of slow
rows costs the per-operation overhead once per pool instead of once per chunk.  The code is plain torch
and runs unchanged on CUDA (``device="cuda"``); float32 is the default compute dtype (float64 allowed;
half precision is refused).  Memory is bounded by the block of rows being fitted (see
:func:`iter_fit_sigmoids` and :func:`fit_file` for streamed passes over inputs larger than memory).

Robustness: rows containing NaN/inf get status ``invalid_input`` and NaN parameters without affecting
other rows; flat rows give ``delta ~ 0`` (category ``unlearned``); step-like rows hit the upper bound of
``lam``; learning times outside the window are limited to ``tau_margin`` beyond it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from tokenscale import TokenscaleError, __version__, native

__all__ = [
    "STATUS_NAMES",
    "CATEGORY_NAMES",
    "SigmoidFit",
    "CategoryRule",
    "fit_sigmoids",
    "iter_fit_sigmoids",
    "fit_file",
    "grid_init",
    "concat_fits",
    "save_fits",
    "load_fits",
    "FITS_FORMAT",
]

STATUS_NAMES = ("converged", "max_iter", "invalid_input")  # codes 0, 1, 2
CATEGORY_NAMES = ("learned", "early", "late", "unlearned")  # codes 0..3, the paper's Fig. 2 groups
FITS_FORMAT = "tokenscale-sigmoid-fits-v1"

_TRANSFORMS = ("log10", "linear")
_ARRAY_FIELDS = (
    "tau", "tau_orig", "lam", "delta", "post", "pre", "sse", "r2", "status", "category", "n_iter",
)
_STEP_CAP_TAU = 0.5  # max |d tau'| per LM step (standardised units: the window is [-1, 1])
_STEP_CAP_RHO = 1.0  # max |d log lam| per LM step
_GRID_LAM_TOP = 4.0  # the start grid's sharpest lam is lam_hi / _GRID_LAM_TOP
_DEFER_AFTER = 8  # LM iterations per chunk before its unconverged rows are pooled with later chunks'

# ----------------------------------------------------------------------------- categories
@dataclass(frozen=True)
class CategoryRule:
    """Thresholds that assign each fit to one of :data:`CATEGORY_NAMES` (the paper's Fig. 2 groups).

    Rules, applied in this order (``x_min``/``x_max``: first/last transformed axis point;
    ``g(x) = sigmoid(lam*(tau - x))`` is the fraction of the event's ``delta`` still ahead at ``x``):

    1. ``unlearned`` if the fit is invalid (status ``invalid_input``), ``|delta| < min_delta`` (nats),
       or ``r2 < min_r2`` (the sigmoid explains too little of the row's variance);
    2. ``unlearned`` if ``delta < 0`` (ascending / forgetting-like) and ``ascending == "unlearned"``
       (with ``ascending == "by_tau"`` such rows are categorised by ``tau`` like descending rows);
    3. ``learned`` if at most ``learned_remaining`` of the event remains at the first axis point,
       ``g(x_min) <= learned_remaining`` (the default 0.5 is exactly ``tau <= x_min``; e.g. 0.1 asks
       for the descent to be 90 % over at the first point);
    4. ``unlearned`` if less than ``min_progress`` of the event has happened by the last axis point,
       ``1 - g(x_max) < min_progress`` (the default 0.5 is exactly ``tau > x_max``);
    5. ``early`` if ``tau < x_min + early_frac * (x_max - x_min)``, else ``late``.
    """

    min_delta: float = 0.2
    min_r2: float = 0.2
    learned_remaining: float = 0.5
    min_progress: float = 0.5
    early_frac: float = 0.5
    ascending: str = "unlearned"

    def __post_init__(self) -> None:
        if self.ascending not in ("unlearned", "by_tau"):
            raise TokenscaleError(
                f"CategoryRule.ascending must be 'unlearned' or 'by_tau', got {self.ascending!r}"
            )
        for name in ("learned_remaining", "min_progress", "early_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise TokenscaleError(f"CategoryRule.{name} must be in [0, 1], got {v}")

    def assign(
        self,
        tau: np.ndarray,
        lam: np.ndarray,
        delta: np.ndarray,
        r2: np.ndarray,
        status: np.ndarray,
        x_min: float,
        x_max: float,
    ) -> np.ndarray:
        """Category codes (N,) int8 for fits given as (N,) arrays on the transformed axis (numpy arrays, or
        torch tensors on any device: then a tensor on that device is returned)."""
        as_numpy = not isinstance(tau, torch.Tensor)
        t = [torch.as_tensor(np.asarray(v)) if as_numpy else v for v in (tau, lam, delta, r2, status)]
        tau_t, lam_t, delta_t, r2_t, status_t = t
        g_first = torch.sigmoid(lam_t * (tau_t - x_min))
        g_last = torch.sigmoid(lam_t * (tau_t - x_max))
        # int8 from the start: torch.where(mask, python int, int8 tensor) stays int8
        cat = torch.where(tau_t < x_min + self.early_frac * (x_max - x_min), 1, 2).to(torch.int8)
        cat = torch.where(1.0 - g_last < self.min_progress, 3, cat)
        cat = torch.where(g_first <= self.learned_remaining, 0, cat)
        if self.ascending == "unlearned":
            cat = torch.where(delta_t < 0, 3, cat)
        bad = (status_t == 2) | ~(delta_t.abs() >= self.min_delta) | ~(r2_t >= self.min_r2)
        cat = torch.where(bad, 3, cat)
        assert cat.dtype == torch.int8
        return cat.numpy() if as_numpy else cat


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ----------------------------------------------------------------------------- result
@dataclass
class SigmoidFit:
    """Per-row sigmoid fits; every per-row field is an (N,) array.

    ``tau``, ``lam`` are on the transformed axis (``lam`` per transformed unit); ``tau_orig`` is the
    learning time in original axis units.  ``status``/``category`` are int8 codes into
    :data:`STATUS_NAMES`/:data:`CATEGORY_NAMES`.  ``axis`` (K,) is the transformed axis used for the
    fit and ``axis_orig`` (K,) the original one.  Invalid rows have NaN parameters.  ``token_index``
    (N,) int64 is the global validation-token index of each row when known (set by :func:`load_fits`
    for files that store it, e.g. those written by the ``fit`` command), else ``None``.
    """

    tau: np.ndarray
    tau_orig: np.ndarray
    lam: np.ndarray
    delta: np.ndarray
    post: np.ndarray
    pre: np.ndarray
    sse: np.ndarray
    r2: np.ndarray
    status: np.ndarray
    category: np.ndarray
    axis: np.ndarray
    axis_orig: np.ndarray
    transform: str
    n_iter: np.ndarray
    rule: CategoryRule = field(default_factory=CategoryRule)
    attrs: dict = field(default_factory=dict)
    token_index: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tau.shape[0])

    def _x(self, x) -> np.ndarray:
        x = self.axis if x is None else np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise TokenscaleError(f"x must be a 1-D transformed axis, got shape {x.shape}")
        return x

    def predict(self, x=None) -> np.ndarray:
        """Fitted losses (N, K') float64 at transformed positions ``x`` (K',), default ``self.axis``."""
        x = self._x(x)
        with np.errstate(invalid="ignore", over="ignore"):
            g = _np_sigmoid(self.lam[:, None] * (self.tau[:, None] - x[None, :]))
            return self.post[:, None] + self.delta[:, None] * g

    def pulse(self, x=None) -> np.ndarray:
        """Learning pulse (N, K') = ``-dloss/dx = delta*lam/4 * sech^2(lam*(x - tau)/2)`` (eq. (2))."""
        x = self._x(x)
        with np.errstate(invalid="ignore", over="ignore"):
            h = 0.5 * self.lam[:, None] * (x[None, :] - self.tau[:, None])
            sech2 = 1.0 / np.cosh(np.clip(h, -350.0, 350.0)) ** 2
            return 0.25 * (self.delta * self.lam)[:, None] * sech2

    def status_counts(self) -> dict[str, int]:
        """Number of rows per status name."""
        return {n: int(np.count_nonzero(self.status == i)) for i, n in enumerate(STATUS_NAMES)}

    def category_counts(self) -> dict[str, int]:
        """Number of rows per category name."""
        return {n: int(np.count_nonzero(self.category == i)) for i, n in enumerate(CATEGORY_NAMES)}


# ----------------------------------------------------------------------------- axis helpers
def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def _transform_axis(axis, transform: str, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``axis`` and return (axis_orig, x) as float64 (K,) arrays."""
    if transform not in _TRANSFORMS:
        raise TokenscaleError(f"unknown transform {transform!r} (expected one of {_TRANSFORMS})")
    if isinstance(axis, torch.Tensor):
        axis = axis.detach().cpu().numpy()
    try:
        a = np.asarray(axis, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TokenscaleError(_one_line(f"axis is not numeric: {e}")) from None
    if a.ndim != 1:
        raise TokenscaleError(f"axis must be 1-D (K,), got shape {a.shape}")
    if k is not None and a.shape[0] != k:
        raise TokenscaleError(f"axis has {a.shape[0]} points but losses have K={k} columns")
    if a.shape[0] < 4:
        raise TokenscaleError(f"need at least 4 axis points for 4 parameters, got K={a.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise TokenscaleError(f"axis must be finite, got axis[{bad[0]}]={a[bad[0]]}")
    d = np.diff(a)
    bad = np.flatnonzero(d <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise TokenscaleError(
            f"axis must be strictly increasing, got axis[{i}]={float(a[i])!r} <= axis[{i - 1}]={float(a[i - 1])!r}"
        )
    if transform == "log10":
        if a[0] <= 0:
            raise TokenscaleError(f"axis must be positive for transform='log10', got axis[0]={float(a[0])!r}")
        x = np.log10(a)
    else:
        x = a.copy()
    return a, x


class _Problem:
    """Axis-dependent constants shared by all chunks (bounds, start grid, standardised axis)."""

    def __init__(self, x: np.ndarray, tau_margin, lam_bounds, grid_shape, delta_max, device, dtype):
        self.x = x
        self.k = x.shape[0]
        self.x_min, self.x_max = float(x[0]), float(x[-1])
        span = self.x_max - self.x_min
        self.c = 0.5 * (self.x_min + self.x_max)
        self.h = 0.5 * span
        t = (x - self.c) / self.h  # standardised axis in [-1, 1]
        if tau_margin is None:
            tau_margin = 0.25 * span
        try:
            tau_margin = float(tau_margin)
        except (TypeError, ValueError):
            raise TokenscaleError(f"tau_margin must be a number, got {tau_margin!r}") from None
        if not (np.isfinite(tau_margin) and tau_margin >= 0):
            raise TokenscaleError(f"tau_margin must be finite and >= 0, got {tau_margin}")
        if lam_bounds is None:
            lam_bounds = (1.0 / span, 10.0 / float(np.min(np.diff(x))))
        try:
            lam_lo, lam_hi = (float(v) for v in lam_bounds)
        except (TypeError, ValueError):
            raise TokenscaleError(f"lam_bounds must be (lo, hi), got {lam_bounds!r}") from None
        if not (np.isfinite(lam_lo) and np.isfinite(lam_hi) and 0 < lam_lo < lam_hi):
            raise TokenscaleError(
                f"lam_bounds must satisfy 0 < lo < hi < inf (lo > 0 keeps delta identifiable), "
                f"got {(lam_lo, lam_hi)!r}"
            )
        try:
            delta_max = float(delta_max)
        except (TypeError, ValueError):
            raise TokenscaleError(f"delta_max must be a number, got {delta_max!r}") from None
        if not (delta_max > 0 and np.isfinite(delta_max)):
            raise TokenscaleError(f"delta_max must be finite and > 0, got {delta_max}")
        self.delta_max = delta_max
        self.tau_margin = tau_margin
        self.lam_bounds = (lam_lo, lam_hi)
        # bounds of the internal variables: tau' (standardised), rho = log(lam * h)
        self.tlo = -1.0 - tau_margin / self.h
        self.thi = 1.0 + tau_margin / self.h
        self.rlo = math.log(lam_lo * self.h)
        self.rhi = math.log(lam_hi * self.h)

        n_tau, n_lam = (int(v) for v in grid_shape)
        self.n_tau, self.n_lam = n_tau, n_lam
        gt = np.linspace(self.tlo, self.thi, n_tau)
        # the grid stops short of the step limit: a step-like start sits on an SSE plateau (no gradient
        # between axis points); LM sharpens further where the data ask for it.
        gr = np.linspace(self.rlo, max(self.rlo, self.rhi - math.log(_GRID_LAM_TOP)), n_lam)
        self.grid_dt = float(gt[1] - gt[0])
        self.grid_dr = float(gr[1] - gr[0]) if n_lam > 1 else 0.0
        GT, GR = np.meshgrid(gt, gr, indexing="ij")  # flat index = i_tau * n_lam + i_lam
        GT, GR = GT.ravel(), GR.ravel()
        z = np.exp(GR)[None, :] * (GT[None, :] - t[:, None])  # (K, G)
        g = _np_sigmoid(z)
        gc = g - g.mean(axis=0, keepdims=True)
        nrm = np.sqrt((gc * gc).sum(axis=0))
        ok = nrm > 1e-3 * math.sqrt(self.k)  # sigmoid not ~flat over the window
        U = np.where(ok[None, :], gc / np.where(ok, nrm, 1.0)[None, :], 0.0)

        self.device, self.dtype = device, dtype
        self.t = torch.as_tensor(t, dtype=dtype, device=device)
        self.negt = -self.t
        self.U = torch.as_tensor(U, dtype=dtype, device=device).contiguous()
        self.grid_tau = torch.as_tensor(GT, dtype=dtype, device=device)
        self.grid_rho = torch.as_tensor(GR, dtype=dtype, device=device)
        g_count = GT.size
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


class _Workspace:
    """Scratch buffers of one chunk (reused across iterations and chunks: no allocation per op)."""

    def __init__(self, n: int, k: int, device, dtype):
        self.n = n
        self.Z = torch.empty((n, k), dtype=dtype, device=device)
        self.R = torch.empty((n, k), dtype=dtype, device=device)
        # stacked planes (j, row, K): every plane [j, :m] is contiguous, one sum reduces them all
        self.A = torch.empty((3, n, k), dtype=dtype, device=device)
        self.F = torch.empty((13, n, k), dtype=dtype, device=device)

    @staticmethod
    def ensure(ws: "_Workspace | None", n: int, k: int, device, dtype) -> "_Workspace":
        if ws is None or ws.n < n:
            return _Workspace(max(n, 1), k, device, dtype)
        return ws


# ----------------------------------------------------------------------------- numerics
# rows of the stacked per-row evaluation returned by _evaluate
_SSE, _DELTA, _GBAR, _B0, _B1, _H00, _H01, _H11 = range(8)


def _basis(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: _Problem,
           ws: _Workspace):
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


def _evaluate(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: _Problem,
              ws: _Workspace) -> torch.Tensor:
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


def _evaluate_sse(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: _Problem,
                  ws: _Workspace):
    """(sse, delta, gbar) at theta without derivatives (a third of the cost of :func:`_evaluate`)."""
    m = Yc.shape[0]
    lam, sl, pos, bbar, inv_var, clamped, delta = _basis(Yc, tau, rho, dmax, P, ws)
    sse = torch.linalg.vector_norm(ws.R[:m], dim=1).square_()
    return sse, torch.where(pos, -delta, delta), torch.where(pos, 1.0 - bbar, bbar)


def _closed_form(Yc: torch.Tensor, tau: torch.Tensor, rho: torch.Tensor, dmax: torch.Tensor, P: _Problem):
    """(sse, delta, gbar) at theta without derivatives (allocating; used off the hot path)."""
    ws = _Workspace(Yc.shape[0], Yc.shape[1], Yc.device, Yc.dtype)
    return _evaluate_sse(Yc, tau, rho, dmax, P, ws)


def _free_mask(tau, rho, b0, b1, P: _Problem):
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


def _capped_step(tau, rho, s0, s1, P: _Problem):
    """theta + s with the step scaled into the per-step caps, then projected onto the bounds."""
    scale = torch.maximum(s0.abs() * (1.0 / _STEP_CAP_TAU), s1.abs() * (1.0 / _STEP_CAP_RHO)).clamp_min_(1.0)
    inv = scale.reciprocal_()
    return (tau + s0 * inv).clamp_(P.tlo, P.thi), (rho + s1 * inv).clamp_(P.rlo, P.rhi)


def _grid_start(Yc: torch.Tensor, P: _Problem, refine: bool = True):
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
_MU0 = 1e-3  # initial LM damping (relative to diag(H)): nearly a Newton step from the grid start
_MU_REJECT = 0.3  # after a rejected step the damping is at least this (the step shrinks markedly)


def _lm(rows: dict, P: _Problem, ws: _Workspace, out: dict, max_iter: int, tol: float,
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
        sse, b0, b1, h00, h01, h11 = st[_SSE], st[_B0], st[_B1], st[_H00], st[_H01], st[_H11]
        f0, f1 = _free_mask(tau, rho, b0, b1, P)
        # Gauss-Newton decrement: predicted SSE decrease of the undamped step on the free coordinates
        g0, g1 = _solve2(h00, h01, h11, b0, b1, 0.0, f0, f1, P.eps)
        dec = -(g0 * b0 + g1 * b1)
        conv = (dec <= tol * sse + X[_FLOOR]) | (mu > 1e8)
        if done is not None:
            conv |= done
        fin = conv | (it >= max_iter)
        fi = fin.nonzero()[:, 0]
        n_fin = fi.shape[0]
        if n_fin:
            sel = idx[fi]
            st_f = st[:, fi]
            t_f, r_f = tau[fi], rho[fi]
            # polish: the final undamped step, kept where it lowers the SSE
            t_n, r_n = _capped_step(t_f, r_f, g0[fi], g1[fi], P)
            sse_n, del_n, gb_n = _evaluate_sse(Yc[fi], t_n, r_n, X[_DMAX, fi], P, ws)
            better = sse_n < st_f[_SSE]
            out["tau"][sel] = torch.where(better, t_n, t_f)
            out["rho"][sel] = torch.where(better, r_n, r_f)
            out["sse"][sel] = torch.where(better, sse_n, st_f[_SSE])
            out["delta"][sel] = torch.where(better, del_n, st_f[_DELTA])
            out["gbar"][sel] = torch.where(better, gb_n, st_f[_GBAR])
            out["status"][sel] = torch.where(conv[fi], 0, 1).to(torch.int8)
            out["n_iter"][sel] = it[fi].to(torch.int32)
            if n_fin == n:
                return None
            keep = (~fin).nonzero()[:, 0]
            idx, Yc, X, st = idx[keep], Yc[keep], X[:, keep], st[:, keep]
            f0, f1 = f0[keep], f1[keep]
            n -= n_fin
            tau, rho, mu, it = X[_TAU], X[_RHO], X[_MU], X[_IT]
            sse, b0, b1, h00, h01, h11 = st[_SSE], st[_B0], st[_B1], st[_H00], st[_H01], st[_H11]
        if defer_after is not None and step >= defer_after:
            return {"idx": idx, "Yc": Yc, "X": X}
        s0, s1 = _solve2(h00, h01, h11, b0, b1, mu, f0, f1, P.eps)
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
            torch.where(acc, (mu * 0.2).clamp_min_(1e-7), (mu * 10.0).clamp_min_(_MU_REJECT)),
            it + 1.0,
        ])
        step += 1


def _cat_rows(parts: list[dict]) -> dict:
    return {"idx": torch.cat([p["idx"] for p in parts]), "Yc": torch.cat([p["Yc"] for p in parts]),
            "X": torch.cat([p["X"] for p in parts], dim=1)}


def _new_out(n: int, dev, dt) -> dict:
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


def _start_rows(Y: torch.Tensor, lo: int, hi: int, P: _Problem, out: dict, refine: bool) -> dict | None:
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
    tau, rho = _grid_start(Yc, P, refine)
    X = torch.stack([
        tau,
        rho,
        P.delta_max * rng,
        16.0 * k * (P.eps * (ybar.abs() + rng + 1.0)) ** 2,
        torch.full((m,), _MU0, dtype=dt, device=dev),
        torch.zeros((m,), dtype=dt, device=dev),
    ])
    return {"idx": idx, "Yc": Yc, "X": X}


def _native_chunk(Y: torch.Tensor, lo: int, hi: int, P: _Problem, opts: dict, out: dict, ws: dict | None) -> dict:
    """Fit rows lo:hi of the CPU tensor Y with the native kernel (centring, grid start and LM of every row
    in C; a row's result depends on that row only).  ``ws``: this worker's scratch buffers."""
    m, k = hi - lo, Y.shape[1]
    if ws is None or ws["Yc"].shape[0] < m:
        ws = {"Yc": torch.empty((m, k), dtype=Y.dtype), "rng": torch.empty((m,), dtype=Y.dtype),
              "valid": torch.empty((m,), dtype=torch.int8)}
    Yc, rng, valid = ws["Yc"][:m], ws["rng"][:m], ws["valid"][:m]
    native.prep(Y[lo:hi], Yc, out["ybar"][lo:hi], out["sst"][lo:hi], rng, valid)
    names = ("tau", "rho", "sse", "delta", "gbar", "status", "n_iter")
    native.fit(Yc, P.U, out["ybar"][lo:hi], rng, valid, P.t, P.grid_tau, P.grid_rho, opts["box"],
               {name: out[name][lo:hi] for name in names})
    return ws


def _run_chunks(Y: torch.Tensor, starts, next_start, P: _Problem, opts: dict, out: dict,
                ws: _Workspace | None) -> _Workspace | None:
    """Fit the chunks handed out by ``next_start()`` (row offsets; None when exhausted) with one
    workspace; unfinished rows of each chunk are pooled and resumed together (see :func:`_lm`)."""
    n, k = Y.shape
    chunk, max_iter, tol, defer_after = opts["chunk"], opts["max_iter"], opts["tol"], opts["defer_after"]
    pool: list[dict] = []
    pool_n = 0
    while True:
        lo = next_start()
        if lo is None:
            break
        hi = min(n, lo + chunk)
        if opts["engine"] == "native":  # per-row C kernel: every row iterates to its own end, no pool
            ws = _native_chunk(Y, lo, hi, P, opts, out, ws)
            continue
        rows = _start_rows(Y, lo, hi, P, out, opts["refine"])
        if rows is None:
            continue
        if opts["engine"] == "triton":  # one fused kernel per chunk: rows iterate in registers, no pool
            from tokenscale import fit_triton

            fit_triton.lm(rows["Yc"], rows["X"], rows["idx"], P, opts, out)
            continue
        ws = _Workspace.ensure(ws, rows["idx"].shape[0], k, Y.device, Y.dtype)
        rest = _lm(rows, P, ws, out, max_iter, tol, defer_after)
        if rest is not None:
            pool.append(rest)
            pool_n += rest["idx"].shape[0]
        if pool_n >= chunk:
            rows = _cat_rows(pool)
            ws = _Workspace.ensure(ws, pool_n, k, Y.device, Y.dtype)
            rest = _lm(rows, P, ws, out, max_iter, tol, defer_after)
            pool = [] if rest is None else [rest]
            pool_n = 0 if rest is None else rest["idx"].shape[0]
    if pool:
        rows = _cat_rows(pool)
        ws = _Workspace.ensure(ws, pool_n, k, Y.device, Y.dtype)
        _lm(rows, P, ws, out, max_iter, tol, None)
    return ws


def _fit_block(Y: torch.Tensor, P: _Problem, opts: dict, wss: list):
    """Fit all rows of the (n, K) tensor ``Y`` (on P.device/P.dtype); returns a dict of (n,) tensors.

    Rows are processed in chunks of ``opts['chunk']`` (cache-sized working set); each chunk runs at most
    ``opts['defer_after']`` LM iterations and hands its unfinished rows to a pool, which is solved when it
    holds a chunk's worth of rows and drained at the end.  On CPU with ``opts['workers'] > 1`` the chunks
    are shared out to that many threads, each running single-threaded torch ops on its own chunks and
    scratch buffers (torch releases the GIL inside its kernels); unlike intra-op parallelism this has no
    barrier per operation, so it keeps scaling when the cores are shared with other processes.
    ``wss`` is the list of per-worker workspaces (reused across blocks).
    """
    n = Y.shape[0]
    out = _new_out(n, Y.device, Y.dtype)
    starts = list(range(0, n, opts["chunk"]))
    workers = min(opts["workers"], len(starts))
    while len(wss) < max(workers, 1):
        wss.append(None)
    if workers <= 1:
        it = iter(starts)
        wss[0] = _run_chunks(Y, starts, lambda: next(it, None), P, opts, out, wss[0])
        return out
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    it = iter(starts)

    def next_start():
        with lock:
            return next(it, None)

    def work(w):
        wss[w] = _run_chunks(Y, starts, next_start, P, opts, out, wss[w])

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # worker threads read the global setting when they first run a parallel op
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenscale-fit") as ex:
            for f in [ex.submit(work, w) for w in range(workers)]:
                f.result()
    finally:
        torch.set_num_threads(prev)
    return out


# ----------------------------------------------------------------------------- input handling
def _resolve_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as e:
        raise TokenscaleError(_one_line(f"bad device {device!r}: {e}")) from None
    if dtype is None:
        dt = torch.float32
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TokenscaleError(f"dtype must be float32 or float64, got {dtype!r}") from None
        dt = {"float32": torch.float32, "float64": torch.float64}.get(name)
        if dt is None:
            raise TokenscaleError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt not in (torch.float32, torch.float64):
        raise TokenscaleError(f"dtype must be float32 or float64 (no half precision for the fit), got {dt}")
    return dev, dt


def _shape_of(losses) -> tuple[int, ...]:
    shape = getattr(losses, "shape", None)
    if shape is None:
        raise TokenscaleError(f"losses must be an (N, K) array, got {type(losses).__name__}")
    return tuple(int(s) for s in shape)


def _check_numeric(block):
    """``block`` as a torch tensor or numpy array of a real numeric dtype (one line error otherwise)."""
    if isinstance(block, torch.Tensor):
        if block.is_complex() or block.dtype == torch.bool:
            raise TokenscaleError(f"losses must be real numbers, got dtype {block.dtype}")
        return block
    arr = np.asarray(block)
    if arr.dtype.kind not in "fiu":
        raise TokenscaleError(f"losses must be numeric, got dtype {arr.dtype}")
    return arr


def _to_tensor(block, dev, dt) -> torch.Tensor:
    if isinstance(block, torch.Tensor):
        return block.detach().to(device=dev, dtype=dt)
    return torch.from_numpy(np.ascontiguousarray(block)).to(device=dev, dtype=dt)


def _default_chunk(dev: torch.device, k: int) -> int:
    if dev.type == "cpu":
        # ~20 (chunk, K) float32 scratch buffers stay within a few MB of cache
        return max(256, (1 << 18) // max(k, 1))
    # GPU: per-op launch overhead (~10 us of host time per torch op, ~150 ops per LM iteration) must be
    # small next to the kernels, so chunks are large: up to 2**21 rows, within 1/32 of the free memory
    # per (row, K) element of float64 (the workspace holds ~20 planes of (chunk, K) plus temporaries)
    rows = 1 << 21
    try:
        free, _ = torch.cuda.mem_get_info(dev)
        rows = min(rows, int(free) // (32 * 8 * max(k, 1)))
    except Exception:  # noqa: BLE001 - non-CUDA accelerators: keep the cap
        pass
    return max(4096, rows)


_ENGINES = ("auto", "native", "triton", "torch")


def _resolve_engine(engine, dev: torch.device) -> str:
    """``"native"`` (the C kernel, CPU), ``"triton"`` (the fused GPU kernel) or ``"torch"`` for ``engine``."""
    if engine not in _ENGINES:
        raise TokenscaleError(f"engine must be one of {_ENGINES}, got {engine!r}")
    if engine == "torch":
        return "torch"
    if engine == "triton" or (engine == "auto" and dev.type == "cuda"):
        from tokenscale import fit_triton

        why = fit_triton.available(dev)
        if why is None:
            return "triton"
        if engine == "triton":
            raise TokenscaleError(f"engine='triton' unavailable: {why}")
        return "torch"
    if dev.type != "cpu":
        if engine == "native":
            raise TokenscaleError(f"engine='native' runs on CPU only, got device {str(dev)!r}")
        return "torch"
    if native.available():
        return "native"
    if engine == "native":
        raise TokenscaleError(f"engine='native' requested but {native.build_error()}")
    if not _ENGINE_WARNED:
        _ENGINE_WARNED.append(True)
        import warnings

        warnings.warn(f"tokenscale.fit: {native.build_error()}; using the (slower) torch engine on CPU",
                      RuntimeWarning, stacklevel=4)
    return "torch"


_ENGINE_WARNED: list = []


# ----------------------------------------------------------------------------- public API
class _Fitter:
    """Validated options + axis constants; fits blocks of rows into numpy result arrays."""

    def __init__(self, k: int, axis, *, transform, device, dtype, chunk_size, max_iter, tol, tau_margin,
                 lam_bounds, categories, delta_max, grid, workers=None, engine="auto", defer_after=_DEFER_AFTER,
                 refine=True):
        self.axis_orig, self.x = _transform_axis(axis, transform, k)
        self.transform = transform
        self.dev, self.dt = _resolve_device_dtype(device, dtype)
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise TokenscaleError(f"device={str(device)!r} requested but CUDA is not available")
        if chunk_size is None:
            chunk_size = _default_chunk(self.dev, k)
        try:
            chunk_size = int(chunk_size)
            max_iter = int(max_iter)
            tol = float(tol)
        except (TypeError, ValueError) as e:
            raise TokenscaleError(_one_line(f"bad numeric option: {e}")) from None
        if chunk_size < 1:
            raise TokenscaleError(f"chunk_size must be >= 1, got {chunk_size}")
        if max_iter < 0:
            raise TokenscaleError(f"max_iter must be >= 0, got {max_iter}")
        if not (tol > 0 and math.isfinite(tol)):
            raise TokenscaleError(f"tol must be finite and > 0, got {tol}")
        try:
            n_tau, n_lam = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise TokenscaleError(f"grid must be (n_tau, n_lam), got {grid!r}") from None
        if n_tau < 2 or n_lam < 1:
            raise TokenscaleError(f"grid must have n_tau >= 2 and n_lam >= 1, got {grid!r}")
        rule = CategoryRule() if categories is None else categories
        if not isinstance(rule, CategoryRule):
            raise TokenscaleError(f"categories must be a CategoryRule, got {type(rule).__name__}")
        self.rule = rule
        self.P = _Problem(self.x, tau_margin, lam_bounds, (n_tau, n_lam), delta_max, self.dev, self.dt)
        if workers is None:
            workers = torch.get_num_threads() if self.dev.type == "cpu" else 1
        workers = _positive_int("workers", workers)
        if self.dev.type != "cpu":
            workers = 1
        engine = _resolve_engine(engine, self.dev)
        P = self.P
        box = native.Box(tlo=P.tlo, thi=P.thi, rlo=P.rlo, rhi=P.rhi, tol=tol, delta_max=P.delta_max,
                         grid_dt=P.grid_dt, grid_dr=P.grid_dr, step_cap_tau=_STEP_CAP_TAU, step_cap_rho=_STEP_CAP_RHO,
                         mu0=_MU0, mu_reject=_MU_REJECT, max_iter=max_iter, n_tau=P.n_tau, n_lam=P.n_lam,
                         refine=int(bool(refine)))
        self.opts = {"chunk": chunk_size, "max_iter": max_iter, "tol": tol, "defer_after": defer_after,
                     "refine": bool(refine), "workers": workers, "engine": engine, "box": box}
        self.attrs = {
            "tau_margin": self.P.tau_margin,
            "lam_bounds": list(self.P.lam_bounds),
            "max_iter": max_iter,
            "tol": tol,
            "compute_dtype": str(self.dt).replace("torch.", ""),
            "grid": [n_tau, n_lam],
            "delta_max": self.P.delta_max,
            "engine": engine,
        }
        self.wss: list = []

    def fit_rows(self, block, dest: dict[str, np.ndarray] | None = None, lo: int = 0) -> dict[str, np.ndarray]:
        """Fit an (n, K) block (numpy / torch / array-like already sliced); numpy float64 results.

        With ``dest`` (a dict of (N,) numpy arrays, one per result field) the results are copied straight
        into ``dest[name][lo:lo + n]`` (one device->host copy per field) and views of those slices returned.
        """
        P = self.P
        with torch.no_grad():
            Y = _to_tensor(block, self.dev, self.dt)
            if Y.ndim != 2 or Y.shape[1] != P.k:
                raise TokenscaleError(f"losses block has shape {tuple(Y.shape)}, expected (n, {P.k})")
            if self.opts["engine"] == "native":
                Y = Y.contiguous()
            res = _fit_block(Y, P, self.opts, self.wss)
            # derived parameters in float64 on the compute device (no per-row numpy pass on the host)
            status = res["status"]
            invalid = status == 2
            f64 = {name: res[name].double() for name in ("tau", "rho", "sse", "delta", "gbar", "ybar", "sst")}
            tau = P.c + P.h * f64["tau"]
            lam = torch.exp(f64["rho"]) / P.h
            delta = f64["delta"]
            post = f64["ybar"] - delta * f64["gbar"]
            sse = f64["sse"]
            sst = f64["sst"]
            r2 = torch.where(sst > 0, 1.0 - sse / torch.where(sst > 0, sst, 1.0), 0.0)
            nan = torch.tensor(math.nan, dtype=torch.float64, device=tau.device)
            tau, lam, delta, post, sse, r2 = (torch.where(invalid, nan, a) for a in (tau, lam, delta, post, sse, r2))
            n_iter = torch.where(invalid, 0, res["n_iter"]).to(torch.int32)
            category = self.rule.assign(tau, lam, delta, r2, status, P.x_min, P.x_max)
            cols = {"tau": tau, "lam": lam, "delta": delta, "post": post,
                    "pre": post + delta, "sse": sse, "r2": r2, "status": status.to(torch.int8),
                    "category": category, "n_iter": n_iter}
            on_host = Y.device.type == "cpu"
            if not on_host:  # elementwise on the GPU: one thread per row, independent of the blocking
                cols["tau_orig"] = torch.pow(10.0, tau) if self.transform == "log10" else tau
            n = Y.shape[0]
            if dest is None:  # numpy allocates large arrays with huge pages: fewer page faults on first touch
                dest, lo = _result_arrays(n), 0
            out = {name: dest[name][lo:lo + n] for name in _ARRAY_FIELDS}
            for name, v in cols.items():
                torch.from_numpy(out[name]).copy_(v)
        if on_host:  # numpy's elementwise power does not depend on how the rows were blocked
            with np.errstate(over="ignore", invalid="ignore"):
                if self.transform == "log10":
                    np.power(10.0, out["tau"], out=out["tau_orig"])
                else:
                    out["tau_orig"][...] = out["tau"]
        return out

    def make_fit(self, cols: dict[str, np.ndarray], token_index=None) -> SigmoidFit:
        return SigmoidFit(axis=self.x, axis_orig=self.axis_orig, transform=self.transform, rule=self.rule,
                          attrs=dict(self.attrs), token_index=token_index, **cols)


_FIT_DOC_PARAMS = """
    transform : ``"log10"`` (default) or ``"linear"``: ``x = f(axis)`` on which eq. (1) is fitted.
    device : torch device for the computation (default CPU); e.g. ``"cuda"``.
    dtype : compute dtype, float32 (default) or float64.
    chunk_size : rows per working chunk (default 4096 on CPU - a cache-sized working set -, up to 2**21
        on GPU, bounded by the free GPU memory); memory is O(chunk_size*K) plus the rows of the block being fitted.
    max_iter : Levenberg-Marquardt iterations per row after the grid start.
    tol : a row converges when the predicted SSE decrease of a Gauss-Newton step is <= tol * SSE.
    tau_margin : tau is bounded to ``[x_min - tau_margin, x_max + tau_margin]`` (transformed units);
        default 0.25 * (x_max - x_min).
    lam_bounds : (lo, hi) bounds of lam in 1/transformed units, 0 < lo < hi; default
        ``(1/(x_max - x_min), 10/min(diff(x)))`` - transitions wider than the window are extrapolated at
        most so far, and the sharpest allowed one goes from 1 % to 99 % within one axis spacing.
    categories : :class:`CategoryRule` (default ``CategoryRule()``).
    delta_max : ``|delta| <= delta_max * (max(row) - min(row))``.  Without it a learning time pushed
        outside the window lets ``delta`` run off along an SSE ridge (only the sigmoid's exponential
        tail is observed, and ``delta * exp(-lam*|tau - x|)`` is all that the data fix), giving
        astronomically large, meaningless ``delta``; the bound makes the problem well posed.
    grid : (n_tau, n_lam) size of the start grid (tau uniform over the bounded range, log lam uniform).
    workers : CPU threads (default ``torch.get_num_threads()``); each fits whole chunks with
        single-threaded torch ops (the global torch thread count is set to 1 for the duration of the call
        and restored afterwards).  Ignored on GPU.
    engine : ``"auto"`` (default), ``"native"``, ``"triton"`` or ``"torch"``: which implementation runs
        the Levenberg-Marquardt stage.  ``"native"`` is the per-row C kernel (:mod:`tokenscale.native`, CPU
        only, built with the system C compiler on first use); ``"triton"`` the fused GPU kernel
        (:mod:`tokenscale.fit_triton`, CUDA); ``"torch"`` the batched torch code (CPU or GPU).  ``"auto"``
        takes the native kernel on CPU when it can be built (else the torch engine, with a warning) and
        Triton on CUDA when it is importable (else torch).  All run the same algorithm from the same
        start; results agree to round-off, not bitwise.
"""


def fit_sigmoids(
    losses,
    axis,
    *,
    transform: str = "log10",
    device=None,
    dtype=None,
    chunk_size: int | None = None,
    max_iter: int = 30,
    tol: float = 1e-5,
    tau_margin: float | None = None,
    lam_bounds: tuple[float, float] | None = None,
    categories: CategoryRule | None = None,
    delta_max: float = 10.0,
    grid: tuple[int, int] = (40, 8),
    workers: int | None = None,
    engine: str = "auto",
    block_size: int | None = None,
) -> SigmoidFit:
    """Fit eq. (1) to every row of ``losses`` with one batched algorithm (see the module docstring).

    Parameters
    ----------
    losses : (N, K) float array: numpy, torch (any device), or any object with ``.shape`` and row
        slicing (e.g. an ``h5py.Dataset``: rows are then read ``block_size`` rows at a time).
    axis : (K,) strictly increasing original axis (steps, tokens, FLOPs, ...); positive for log10.
    block_size : rows converted to the compute dtype/device at a time (default 2**18); the results
        (N,) are held in memory - for inputs too large for that use :func:`iter_fit_sigmoids` or
        :func:`fit_file`.
    """ + _FIT_DOC_PARAMS + """
    Returns
    -------
    :class:`SigmoidFit` with (N,) float64 parameters; invalid rows (NaN/inf) have NaN parameters and
    status ``invalid_input``.

    Raises
    ------
    TokenscaleError : bad shapes, non-increasing / non-finite / non-positive (log10) axis, bad options.
    """
    shape = _shape_of(losses)
    if len(shape) != 2:
        raise TokenscaleError(f"losses must be 2-D (N, K), got shape {shape}")
    n, k = shape
    fitter = _Fitter(k, axis, transform=transform, device=device, dtype=dtype, chunk_size=chunk_size,
                     max_iter=max_iter, tol=tol, tau_margin=tau_margin, lam_bounds=lam_bounds,
                     categories=categories, delta_max=delta_max, grid=grid, workers=workers, engine=engine)
    bs = _block_rows(block_size, fitter)
    if n <= bs:
        cols = fitter.fit_rows(_check_numeric(losses[0:n]) if n else _empty_block(k))
    else:
        cols = _result_arrays(n)
        for lo in range(0, n, bs):
            fitter.fit_rows(_check_numeric(losses[lo:min(n, lo + bs)]), dest=cols, lo=lo)
    return fitter.make_fit(cols)


def iter_fit_sigmoids(blocks: Iterable, axis, **options) -> Iterator[SigmoidFit]:
    """Streamed fits: yield one :class:`SigmoidFit` per (n_i, K) block of ``blocks`` (any iterable of
    numpy/torch arrays, e.g. a generator reading a file).  The axis constants, start grid and scratch
    buffers are built once; memory is bounded by one block and its results.  ``options`` are those of
    :func:`fit_sigmoids` (except ``block_size``); ``concat_fits`` of the yielded fits equals
    ``fit_sigmoids`` of the concatenated blocks.
    """
    fitter = None
    for i, block in enumerate(blocks):
        shape = _shape_of(block)
        if len(shape) != 2:
            raise TokenscaleError(f"block {i} must be 2-D (n, K), got shape {shape}")
        if fitter is None:
            fitter = _Fitter(shape[1], axis, **_fitter_options(options))
        elif shape[1] != fitter.P.k:
            raise TokenscaleError(f"block {i} has K={shape[1]} columns, expected {fitter.P.k}")
        yield fitter.make_fit(fitter.fit_rows(_check_numeric(block) if shape[0] else _empty_block(shape[1])))


def _fitter_options(options: dict) -> dict:
    allowed = ("transform", "device", "dtype", "chunk_size", "max_iter", "tol", "tau_margin", "lam_bounds",
               "categories", "delta_max", "grid", "workers", "engine")
    bad = [key for key in options if key not in allowed]
    if bad:
        raise TokenscaleError(f"unknown fit option {bad[0]!r} (expected one of {allowed})")
    defaults = {"transform": "log10", "device": None, "dtype": None, "chunk_size": None, "max_iter": 30,
                "tol": 1e-5, "tau_margin": None, "lam_bounds": None, "categories": None, "delta_max": 10.0,
                "grid": (40, 8), "workers": None, "engine": "auto"}
    defaults.update(options)
    return defaults


def _block_rows(block_size, fitter: "_Fitter") -> int:
    if block_size is None:
        return max(fitter.opts["chunk"], 1 << 18)
    return _positive_int("block_size", block_size)


def _positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a one-line error naming ``name``."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise TokenscaleError(f"{name} must be an integer, got {value!r}") from None
    if v < 1:
        raise TokenscaleError(f"{name} must be >= 1, got {v}")
    return v


def _empty_block(k: int) -> np.ndarray:
    return np.zeros((0, k), dtype=np.float32)


def fit_file(
    trajectories,
    out,
    *,
    axis: str = "step",
    block_rows: int = 1 << 18,
    attrs: dict | None = None,
    **options,
) -> dict:
    """Fit every trajectory of an HDF5 trajectory shard (docs/trajectories.md) in one streamed pass.

    Reads dataset ``loss`` (n, K) ``block_rows`` rows at a time (the shard is chunked by rows), fits each
    block and writes its results straight into the sigmoid-fits file ``out`` (the :func:`save_fits`
    layout, written to ``out + ".tmp"`` then renamed), so peak memory is bounded by one block whatever
    n is.  ``axis`` names the fit axis: ``"step"`` or ``"tokens"`` (``axis/<name>`` in the shard).
    ``token_index`` is copied from the shard when present.  ``options`` are those of
    :func:`fit_sigmoids`.  Returns a summary dict (``n``, ``seconds``, ``status_counts``,
    ``category_counts``, ``out``).
    """
    import time

    import h5py

    src = Path(trajectories)
    dst = os.fspath(out)
    if not src.is_file():
        raise TokenscaleError(f"{src}: trajectory file not found")
    block_rows = _positive_int("block_rows", block_rows)
    t0 = time.perf_counter()
    status_counts = np.zeros(len(STATUS_NAMES), dtype=np.int64)
    category_counts = np.zeros(len(CATEGORY_NAMES), dtype=np.int64)
    try:
        fin = h5py.File(src, "r")
    except OSError as e:
        raise TokenscaleError(_one_line(f"{src}: cannot open trajectory file (truncated or corrupt?): {e}")) from None
    with fin:
        try:
            loss = fin["loss"]
            if not isinstance(loss, h5py.Dataset) or loss.ndim != 2:
                raise TokenscaleError(f"{src}: dataset 'loss' must be (n, K)")
            n, k = (int(s) for s in loss.shape)
            key = f"axis/{axis}"
            if key not in fin:
                raise TokenscaleError(f"{src}: no axis {axis!r} (dataset {key!r} missing)")
            axis_vals = np.asarray(fin[key][()], dtype=np.float64)
            token_index = fin["token_index"] if "token_index" in fin else None
            if token_index is not None and token_index.shape != (n,):
                raise TokenscaleError(f"{src}: token_index has shape {token_index.shape}, expected ({n},)")
        except KeyError as e:
            raise TokenscaleError(_one_line(f"{src}: not a trajectory file: {e}")) from None
        fitter = _Fitter(k, axis_vals, **_fitter_options(options))
        user = {"trajectories": str(src), "axis_name": axis, **(attrs or {})}

        def blocks():
            for lo in range(0, n, block_rows):
                hi = min(n, lo + block_rows)
                try:
                    y = loss[lo:hi]
                    ti = None if token_index is None else np.asarray(token_index[lo:hi], dtype=np.int64)
                except (OSError, ValueError) as e:
                    raise TokenscaleError(_one_line(f"{src}: cannot read rows {lo}:{hi}: {e}")) from None
                yield lo, hi, y, ti

        def write(f):
            for lo, hi, y, ti in blocks():
                cols = fitter.fit_rows(_check_numeric(y))
                for name, v in cols.items():
                    f[name][lo:hi] = v
                if ti is not None:
                    f["token_index"][lo:hi] = ti
                status_counts[:] += np.bincount(cols["status"], minlength=len(STATUS_NAMES))[: len(STATUS_NAMES)]
                category_counts[:] += np.bincount(cols["category"], minlength=len(CATEGORY_NAMES))[: len(CATEGORY_NAMES)]

        _write_fits_file(dst, n, fitter.make_fit(_result_arrays(0), None), user,
                         with_token_index=token_index is not None, fill=write)
    dt = time.perf_counter() - t0
    return {
        "n": n,
        "seconds": dt,
        "status_counts": dict(zip(STATUS_NAMES, status_counts.tolist())),
        "category_counts": dict(zip(CATEGORY_NAMES, category_counts.tolist())),
        "out": dst,
    }


def _result_arrays(n: int) -> dict[str, np.ndarray]:
    """Uninitialised (n,) result arrays, one per field of :class:`SigmoidFit` (the fits-file dtypes)."""
    return {name: np.empty((n,), dtype=_DSET_DTYPES.get(name, np.float64)) for name in _ARRAY_FIELDS}


def grid_init(
    losses,
    axis,
    *,
    transform: str = "log10",
    tau_margin: float | None = None,
    lam_bounds: tuple[float, float] | None = None,
    delta_max: float = 10.0,
    grid: tuple[int, int] = (40, 8),
) -> dict[str, np.ndarray]:
    """Stage 1 of :func:`fit_sigmoids` only: every row's start point (float64, CPU).

    That is the best start-grid point, moved by the quadratic fit of its 3x3 grid neighbourhood, with
    the exact least-squares ``(post, delta)`` there.  Returns a dict of (N,) arrays ``tau``, ``lam``
    (transformed axis), ``delta``, ``post``.  Useful to give another optimiser (e.g.
    ``scipy.optimize.curve_fit``) the same start as this engine.
    """
    shape = _shape_of(losses)
    if len(shape) != 2:
        raise TokenscaleError(f"losses must be 2-D (N, K), got shape {shape}")
    _, x = _transform_axis(axis, transform, shape[1])
    cpu = torch.device("cpu")
    # the start is computed exactly as in the engine (float32 grid), then (post, delta) in float64
    P32 = _Problem(x, tau_margin, lam_bounds, tuple(grid), delta_max, cpu, torch.float32)
    P = _Problem(x, tau_margin, lam_bounds, tuple(grid), delta_max, cpu, torch.float64)
    with torch.no_grad():
        Y = _to_tensor(_check_numeric(losses[0:shape[0]]), cpu, torch.float64)
        Y = torch.where(torch.isfinite(Y), Y, 0.0)
        ybar = Y.mean(1)
        Yc = Y - ybar[:, None]
        tau32, rho32 = _grid_start(Yc.to(torch.float32), P32)
        tau, rho = tau32.double(), rho32.double()
        dmax = P.delta_max * (Y.amax(dim=1) - Y.amin(dim=1))
        _, delta, gbar = _closed_form(Yc, tau, rho, dmax, P)
    return {
        "tau": (P.c + P.h * tau).numpy(),
        "lam": (torch.exp(rho) / P.h).numpy(),
        "delta": delta.numpy(),
        "post": (ybar - delta * gbar).numpy(),
    }


def concat_fits(fits: Sequence[SigmoidFit]) -> SigmoidFit:
    """Concatenate fits of row chunks that share axis, transform and rule (e.g. a streamed pass).

    ``token_index`` is concatenated when every part has one, and is ``None`` when none has.
    """
    fits = list(fits)
    if not fits:
        raise TokenscaleError("concat_fits needs at least one SigmoidFit")
    f0 = fits[0]
    for i, f in enumerate(fits[1:], 1):
        if f.transform != f0.transform or not np.array_equal(f.axis_orig, f0.axis_orig):
            raise TokenscaleError(f"concat_fits: fit {i} has a different axis or transform than fit 0")
        if f.rule != f0.rule:
            raise TokenscaleError(f"concat_fits: fit {i} has a different category rule than fit 0")
    has_ti = [f.token_index is not None for f in fits]
    if any(has_ti) and not all(has_ti):
        raise TokenscaleError(f"concat_fits: fit {has_ti.index(not has_ti[0])} "
                              f"{'lacks' if has_ti[0] else 'has'} token_index but fit 0 does not")
    cols = {name: np.concatenate([getattr(f, name) for f in fits]) for name in _ARRAY_FIELDS}
    ti = np.concatenate([np.asarray(f.token_index, dtype=np.int64) for f in fits]) if all(has_ti) else None
    return SigmoidFit(axis=f0.axis, axis_orig=f0.axis_orig, transform=f0.transform, rule=f0.rule,
                      attrs=dict(f0.attrs), token_index=ti, **cols)


# ----------------------------------------------------------------------------- HDF5 I/O
def _attr_json(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
        return v
    return json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


_DSET_DTYPES = {"status": np.int8, "category": np.int8, "n_iter": np.int32}


def _write_fits_file(path: str, n: int, meta: SigmoidFit, user_attrs: dict | None, *, with_token_index: bool,
                     fill) -> None:
    """Create the fits file at ``path`` atomically; ``fill(h5file)`` writes the (n,) datasets' rows."""
    import h5py

    tmp = path + ".tmp"
    chunks = (min(max(n, 1), 1 << 16),) if n else None
    try:
        with h5py.File(tmp, "w") as f:
            for name in _ARRAY_FIELDS:
                f.create_dataset(name, shape=(n,), dtype=_DSET_DTYPES.get(name, np.float64), chunks=chunks)
            if with_token_index:
                f.create_dataset("token_index", shape=(n,), dtype=np.int64, chunks=chunks)
            f.create_dataset("axis", data=np.asarray(meta.axis, dtype=np.float64))
            f.create_dataset("axis_orig", data=np.asarray(meta.axis_orig, dtype=np.float64))
            f.attrs["format"] = FITS_FORMAT
            f.attrs["transform"] = meta.transform
            f.attrs["status_names"] = json.dumps(STATUS_NAMES)
            f.attrs["category_names"] = json.dumps(CATEGORY_NAMES)
            f.attrs["category_rule"] = json.dumps(asdict(meta.rule))
            f.attrs["fit_options"] = json.dumps({k: v for k, v in meta.attrs.items() if k != "user"}, default=str)
            f.attrs["tokenscale_version"] = __version__
            for key, v in (user_attrs or {}).items():
                f.attrs[f"user.{key}"] = _attr_json(v)
            fill(f)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_fits(path, fit: SigmoidFit, attrs: dict | None = None, token_index=None) -> None:
    """Write ``fit`` to HDF5 at ``path`` atomically (``path + ".tmp"`` then ``os.replace``).

    One dataset per field (``tau``, ``tau_orig``, ``lam``, ``delta``, ``post``, ``pre``, ``sse``, ``r2``,
    ``status``, ``category``, ``n_iter``: (N,); ``axis``, ``axis_orig``: (K,)), optionally ``token_index``
    (N,) int64 - the global validation-token index of each row, from the ``token_index`` argument or else
    ``fit.token_index`` -, plus file attributes: ``format``, ``transform``, ``status_names``,
    ``category_names``, ``category_rule`` (JSON thresholds), ``fit_options`` (JSON),
    ``tokenscale_version``, and ``attrs`` (user attributes as ``user.<key>``; non-scalar values are
    stored as JSON strings).
    """
    n = len(fit)
    ti = fit.token_index if token_index is None else token_index
    if ti is not None:
        ti = np.asarray(ti)
        if ti.shape != (n,):
            raise TokenscaleError(f"token_index has shape {ti.shape}, expected ({n},) like the fit")
        if ti.dtype.kind not in "iu":
            raise TokenscaleError(f"token_index must be integers, got dtype {ti.dtype}")
    for name in _ARRAY_FIELDS:
        if np.shape(getattr(fit, name)) != (n,):
            raise TokenscaleError(f"fit.{name} has shape {np.shape(getattr(fit, name))}, expected ({n},)")

    def fill(f):
        for name in _ARRAY_FIELDS:
            f[name][...] = np.asarray(getattr(fit, name))
        if ti is not None:
            f["token_index"][...] = ti.astype(np.int64)

    _write_fits_file(os.fspath(path), n, fit, attrs, with_token_index=ti is not None, fill=fill)


def load_fits(path) -> SigmoidFit:
    """Read a file written by :func:`save_fits` or :func:`fit_file`.

    User attributes come back in ``fit.attrs["user"]``; the ``token_index`` dataset, when present, as
    ``fit.token_index`` (else ``None``).  A missing, truncated or otherwise corrupt file raises
    :class:`tokenscale.TokenscaleError` with a one-line message naming the file.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise TokenscaleError(f"{p}: sigmoid-fits file not found")
    try:
        with h5py.File(p, "r") as f:
            if f.attrs.get("format") != FITS_FORMAT:
                raise TokenscaleError(f"{p}: not a sigmoid-fits file (format={f.attrs.get('format')!r})")
            data = {name: f[name][()] for name in _ARRAY_FIELDS + ("axis", "axis_orig")}
            token_index = f["token_index"][()] if "token_index" in f else None
            transform = str(f.attrs["transform"])
            rule = CategoryRule(**json.loads(f.attrs["category_rule"]))
            opts = json.loads(f.attrs.get("fit_options", "{}"))
            user = {}
            for key, v in f.attrs.items():
                if key.startswith("user."):
                    user[key[5:]] = v.item() if isinstance(v, np.generic) else v
    except TokenscaleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise TokenscaleError(_one_line(f"{p}: cannot read sigmoid-fits file (truncated or corrupt?): {e}")) from None
    n = data["tau"].shape[0]
    k = data["axis"].shape[0]
    for name in _ARRAY_FIELDS:
        if data[name].shape != (n,):
            raise TokenscaleError(f"{p}: dataset {name!r} has shape {data[name].shape}, expected ({n},)")
    if data["axis_orig"].shape != (k,):
        raise TokenscaleError(f"{p}: dataset 'axis_orig' has shape {data['axis_orig'].shape}, expected ({k},)")
    if token_index is not None and token_index.shape != (n,):
        raise TokenscaleError(f"{p}: dataset 'token_index' has shape {token_index.shape}, expected ({n},)")
    if user:
        opts["user"] = user
    return SigmoidFit(transform=transform, rule=rule, attrs=opts, token_index=token_index, **data)
