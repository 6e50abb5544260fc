"""Per-token power laws ``ℓ_i(a) = k_i a^−α_i + E_i``, fitted batched over tokens (hypothesis B of the paper, §3).

The paper's hypothesis B is that every token's loss decays as a power law of the original axis ``a`` (step, data,
parameters) and the aggregate power law is their sum. :mod:`tokenscale.analysis.hypothesis_b` compares this model
with the sigmoid of eq. (1) token by token; this module is the fit.

Model, on the original axis ``a > 0`` (the fit's ``axis_orig``; the sigmoid lives on ``x = log10(a)``, where the
power law is the exponential ``k 10^{−α x} + E``). With ``s = a / a_ref`` (``a_ref`` = the geometric mean of the
axis, for conditioning) and ``g_α(s) = s^−α − 1 = expm1(−α ln s)`` (small for small α, so no cancellation)::

    ℓ(a) = k' g_α(s) + c,      k = k' a_ref^α,   E = c − k'

Variable projection. For fixed α the model is linear in ``(k', c)``: on a row's finite points (mask ``m``), with
``ȳ``, ``ḡ`` the row means, ``y_c = y − ȳ``, ``S_gg = Σ m (g − ḡ)²`` and ``S_gy = Σ m g y_c``::

    k' = S_gy / S_gg,   c = ȳ − k' ḡ,   RSS(α) = Σ m y_c² − S_gy² / S_gg      (RSS = Σ m y_c² where S_gg ≈ 0)

1. **Grid**: RSS(α) of every row on ``n_grid`` log-spaced α in ``alpha_bounds`` (default 0.01 … 5) at once: the
   sums are three (N, K) × (K, G) products.
2. **Refine**: golden-section search on ``log α`` in the bracket of the best grid point and its two neighbours,
   vectorised over rows (one (N, K) evaluation per iteration, ``n_refine`` iterations: the bracket shrinks by
   0.618 each; 40 iterations take a grid cell of 0.1 in log α below 1e-9). A profile with several minima inside
   one grid cell is not resolved; the grid is fine enough that this does not matter for a 3-parameter smooth curve.
3. The final ``(k, E)`` and RSS are computed from the residuals at the refined α (not from the profile formula).

``k`` and ``E`` are unconstrained (the sigmoid's Δ and ℓ_post are unconstrained in sign too): a constraint could
only raise the power law's RSS, so a comparison with the sigmoid sees the power law at its best.

Why not :func:`scipy.optimize.curve_fit` per token: a series has 10⁴–10⁶ tokens and curve_fit costs about a
millisecond per token from Python (minutes per series, and it needs a start value per token); the profile grid
plus a vectorised golden section fits all rows in a few (N, K)-sized array passes, and a grid start cannot land in
a local minimum far from the global one. tests/test_powerlaw_token.py checks that both give the same RSS.

Status per row (:data:`STATUS_NAMES`, codes as in the sigmoid fits where they mean the same): ``converged`` (0),
``alpha_at_bound`` (1; α is within the refine tolerance of an end of ``alpha_bounds``, e.g. a flat row, whose α
is not identifiable and whose k is 0), ``invalid_input`` (2; fewer than 3 finite points: NaN parameters).
Non-finite entries of a row are left out of its sums (its other points are fitted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokenscale import TokenscaleError

__all__ = ["STATUS_NAMES", "PowerLawFits", "fit_power_laws", "power_law_curve"]

STATUS_NAMES = ("converged", "alpha_at_bound", "invalid_input")  # codes 0, 1, 2
N_PARAMS = 3  # k, alpha, E
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


@dataclass
class PowerLawFits:
    """Per-row results (N,) float64 (``status``, ``n_points`` int) and the axis they were fitted on."""

    k: np.ndarray
    alpha: np.ndarray
    E: np.ndarray
    rss: np.ndarray
    n_points: np.ndarray
    status: np.ndarray
    axis_orig: np.ndarray

    def __len__(self) -> int:
        return int(self.k.size)

    def predict(self, a=None) -> np.ndarray:
        """(N, K') fitted losses at original-axis points ``a`` (K',), default the fitted axis."""
        return power_law_curve(self.axis_orig if a is None else a, self.k, self.alpha, self.E)


def power_law_curve(a, k, alpha, E) -> np.ndarray:
    """``k a^−α + E``: (N, K) float64 for (K,) ``a`` and (N,) parameters."""
    a = np.asarray(a, dtype=np.float64)
    k, alpha, E = (np.atleast_1d(np.asarray(v, dtype=np.float64))[:, None] for v in (k, alpha, E))
    with np.errstate(over="ignore", invalid="ignore"):
        return k * np.exp(-alpha * np.log(a)[None, :]) + E


def _check_axis(axis, k: int) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64).ravel()
    if a.size != k:
        raise TokenscaleError(f"axis has {a.size} points but losses have K={k} columns")
    if a.size < N_PARAMS:
        raise TokenscaleError(f"need at least {N_PARAMS} axis points for a power law, got K={a.size}")
    bad = np.flatnonzero(~(np.isfinite(a) & (a > 0)))
    if bad.size:
        raise TokenscaleError(f"a power law needs a finite positive axis, got axis[{bad[0]}]={a[bad[0]]!r}")
    return a


def _check_bounds(alpha_bounds, n_grid: int, n_refine: int) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in alpha_bounds)
    except (TypeError, ValueError):
        raise TokenscaleError(f"alpha_bounds must be (lo, hi), got {alpha_bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise TokenscaleError(f"alpha_bounds must satisfy 0 < lo < hi < inf, got {(lo, hi)!r}")
    if int(n_grid) < 3 or int(n_refine) < 0:
        raise TokenscaleError(f"n_grid must be >= 3 and n_refine >= 0, got {n_grid}, {n_refine}")
    return lo, hi


class _Rows:
    """One block of rows: mask, centred values and their sums (the α-independent part of the profile)."""

    def __init__(self, y: np.ndarray):
        self.m = np.isfinite(y)
        self.w = self.m.astype(np.float64)
        self.n = self.w.sum(axis=1)  # (B,)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.ybar = np.where(self.m, y, 0.0).sum(axis=1) / self.n
        self.yc = np.where(self.m, y - self.ybar[:, None], 0.0)
        self.syy = (self.yc * self.yc).sum(axis=1)

    def grid_rss(self, L: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """(B, G) RSS of every row at every α of the grid (three matrix products)."""
        gm = np.expm1(-L[:, None] * alphas[None, :])  # (K, G)
        sg, sgg, sgy = self.w @ gm, self.w @ (gm * gm), self.yc @ gm
        with np.errstate(invalid="ignore", divide="ignore"):
            sggc = sgg - sg * sg / self.n[:, None]
            ok = sggc > 1e-300
            return np.where(ok, self.syy[:, None] - np.where(ok, sgy * sgy / np.where(ok, sggc, 1.0), 0.0),
                            self.syy[:, None])

    def solve(self, L: np.ndarray, alpha: np.ndarray, exact: bool = False):
        """(k', gbar, RSS) (B,) each at the per-row α (B,); ``exact``: RSS from the residuals."""
        g = np.where(self.m, np.expm1(-alpha[:, None] * L[None, :]), 0.0)  # (B, K)
        with np.errstate(invalid="ignore", divide="ignore"):
            gbar = g.sum(axis=1) / self.n
            gc = np.where(self.m, g - gbar[:, None], 0.0)
            sggc, sgy = (gc * gc).sum(axis=1), (gc * self.yc).sum(axis=1)
            ok = sggc > 1e-300
            kp = np.where(ok, sgy / np.where(ok, sggc, 1.0), 0.0)
        if exact:
            r = self.yc - kp[:, None] * gc
            return kp, gbar, (r * r).sum(axis=1)
        return kp, gbar, self.syy - kp * sgy


def _golden(rows: _Rows, L: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_iter: int) -> np.ndarray:
    """Golden-section minimum of RSS(exp(u)) over u in [lo, hi] (B,) per row; returns u (B,)."""
    c = hi - _INV_PHI * (hi - lo)
    d = lo + _INV_PHI * (hi - lo)
    fc = rows.solve(L, np.exp(c))[2]
    fd = rows.solve(L, np.exp(d))[2]
    for _ in range(n_iter):
        left = fc <= fd  # the minimum lies in [lo, d]
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        new = np.where(left, hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo))
        fnew = rows.solve(L, np.exp(new))[2]
        c, d, fc, fd = (np.where(left, new, d), np.where(left, c, new),
                        np.where(left, fnew, fd), np.where(left, fc, fnew))
    return np.where(fc <= fd, c, d)


def _fit_block(y: np.ndarray, L: np.ndarray, log_grid: np.ndarray, n_refine: int, log_ref: float) -> dict:
    rows = _Rows(y)
    ok = rows.n >= N_PARAMS
    rss_grid = rows.grid_rss(L, np.exp(log_grid))
    rss_grid[~ok] = 0.0
    i = np.argmin(rss_grid, axis=1)  # first minimum (a flat profile: the smallest α)
    G = log_grid.size
    u = _golden(rows, L, log_grid[np.maximum(i - 1, 0)], log_grid[np.minimum(i + 1, G - 1)], n_refine)
    alpha = np.exp(u)
    kp, gbar, rss = rows.solve(L, alpha, exact=True)
    # the golden section can only lose against its bracket's grid point in a degenerate profile: keep the better
    worse = rss > rss_grid[np.arange(i.size), i]
    if worse.any():
        alpha[worse] = np.exp(log_grid[i[worse]])
        kp[worse], gbar[worse], rss[worse] = (v[worse] for v in rows.solve(L, alpha, exact=True))
    with np.errstate(over="ignore", invalid="ignore"):
        k = kp * np.exp(alpha * log_ref)
    E = rows.ybar - kp * (1.0 + gbar)
    tol = 1e-6 * (log_grid[-1] - log_grid[0])
    status = np.where((u - log_grid[0] <= tol) | (log_grid[-1] - u <= tol), 1, 0).astype(np.int8)
    out = {"k": k, "alpha": alpha, "E": E, "rss": rss, "n_points": rows.n.astype(np.int64), "status": status}
    for name in ("k", "alpha", "E", "rss"):
        out[name] = np.where(ok, out[name], np.nan)
    out["status"] = np.where(ok, status, 2).astype(np.int8)
    return out


def fit_power_laws(losses, axis, *, alpha_bounds=(0.01, 5.0), n_grid: int = 64, n_refine: int = 40,
                   chunk_rows: int = 1 << 15) -> PowerLawFits:
    """Least-squares ``ℓ_i(a) = k_i a^−α_i + E_i`` for every row of ``losses`` (N, K) on the original axis
    ``axis`` (K,) (> 0); definitions in the module docstring. ``losses`` may be any array-like with row slicing
    (numpy, memmap, h5py); it is read ``chunk_rows`` rows at a time in float64."""
    shape = getattr(losses, "shape", None)
    if shape is None:
        losses = np.asarray(losses)
        shape = losses.shape
    if len(shape) != 2:
        raise TokenscaleError(f"losses must be a 2-D (N, K) array, got shape {tuple(shape)}")
    n, kk = int(shape[0]), int(shape[1])
    a = _check_axis(axis, kk)
    lo, hi = _check_bounds(alpha_bounds, n_grid, n_refine)
    log_ref = float(np.mean(np.log(a)))
    L = np.log(a) - log_ref  # ln s
    log_grid = np.linspace(math.log(lo), math.log(hi), int(n_grid))
    parts = [_fit_block(np.asarray(losses[i0:i0 + chunk_rows], dtype=np.float64), L, log_grid, int(n_refine),
                        log_ref) for i0 in range(0, n, max(1, int(chunk_rows)))]
    if not parts:
        parts = [_fit_block(np.zeros((0, kk)), L, log_grid, int(n_refine), log_ref)]
    cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return PowerLawFits(axis_orig=a, **cat)
