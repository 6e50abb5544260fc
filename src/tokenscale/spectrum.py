"""Pulse–spectrum decomposition of an aggregate loss curve (paper §3, §4, App. A.3.5–A.3.6).

Works on any axis (training step T, data D, model scale M): everything is expressed on the fit's
*transformed* axis ``x`` (``log10`` of the original unit, or the original unit for ``linear``),
exactly the axis on which the token sigmoids ``ℓ_i(x) = post_i + Δ_i[1 − σ(λ_i(x − τ_i))]`` were
fitted. Inputs are the (N, K) token-loss trajectories and a fit result (duck type of
``tokenscale.fit.SigmoidFit``: only the attributes ``tau, tau_orig, lam, delta, post, status,
category, axis, axis_orig, transform`` are read).

Definitions used throughout (all on the transformed axis x):

* Valid token: fit status != 2 (invalid_input), finite ``tau, lam, delta, post`` and a loss row
  with no non-finite entry. Every aggregate uses the same valid set; the rest are counted.
* Empirical mean loss ``L(x_k)`` = mean over valid tokens of ``losses[:, k]``.
* Sigmoid-implied mean loss = mean over valid tokens of the fitted sigmoid.
* Derivatives are ``L′(x) = −dL/dx`` (per unit x; for ``log10`` that is "per decade").
  Empirical: finite differences on the (possibly non-uniform) axis; ``smoothing="none"``
  (default) uses second-order ``numpy.gradient`` (one-sided at the two ends); ``"savgol"``
  resamples L on a uniform x grid with PCHIP, takes a Savitzky–Golay derivative
  (``savgol_window`` points, ``savgol_polyorder``) and interpolates back to the axis points. The
  mean over many tokens is already smooth, so no smoothing is the default: Savitzky–Golay with a
  5-point window lowers the peak of a pulse sampled ~7 points per FWHM by ~6 % (a 5-point
  quadratic derivative is the least-squares slope), which would bias the per-bin pulses; use it
  for noisy aggregates (few tokens per bin, noisy evaluations). Sigmoid-implied: analytic mean of the pulses
  ``Δλ/4 sech²(λ(x−τ)/2)`` (Eq. 2–3).
* Window: ``[x_0, x_{K−1}]``. Learning times inside it are "observed"; τ outside it is an
  extrapolation of the fit and is only used where a pulse tail reaches into the window.
* Spectrum ``p(τ)`` (Eq. 5): fraction of valid tokens per unit x, on ``n_bins`` equal-width bins
  of x spanning the window (log-spaced bins in original units for ``log10``); also given as a
  density per original unit (``fraction / Δτ_orig``), whose log-log slope is −β.
* Tail: truncated power law ``p(τ) ∝ τ^−β`` on ``[τ_min, τ_max]`` with ``τ_max`` = window end
  (τ beyond the window is unobservable, so an untruncated Pareto MLE would be biased). ``β`` by
  maximum likelihood for each candidate ``τ_min``; ``τ_min`` chosen by minimising the KS distance
  (Clauset–Shalizi–Newman 2009). Computed from a fine histogram of τ (``FINE_BINS`` bins on x with
  per-bin sums of ln τ, so the MLE statistic is exact and the KS distance is evaluated at the
  fine-bin edges). CI: token bootstrap (multinomial resampling of the fine histogram, which
  equals resampling tokens), re-selecting ``τ_min`` in every replicate.
* Theory: with ``p(τ) ∝ τ^−β`` and pulses of roughly common shape, ``L(a) − E ≈ (1/N)
  Σ_{τ_i > a} Δ_i ∝ ∫_a^∞ τ^−β dτ ∝ a^{−(β−1)}``; on the log axis a pulse of fixed shape
  convolved with ``10^{−(β−1)x}`` stays an exponential of the same rate, so ``α = β − 1``
  exactly in the asymptotic regime. Reported as ``alpha_predicted`` next to the fitted α.
* Power law ``L(a) = k a^−α + E`` fitted by least squares on the empirical mean loss at
  post-transient axis points (original units; ``k, E ≥ 0``; α by profile search). CI: token
  bootstrap by groups — every valid token is assigned at random to one of ``n_groups`` groups
  during the pass; replicates resample groups with replacement and refit. This treats tokens as
  exchangeable (within-document correlation is ignored) and does not cover misspecification.
* Transient rule (``transient=``): a float ``f`` in [0, 1) drops the first fraction ``f`` of the
  transformed-axis span (default 0.1); ``"peak"`` drops points before the maximum of the
  empirical loss; ``"dpeak"`` drops points before the maximum of the empirical −dL/dx (the initial
  random-init plateau and the onset of learning; the workflow's default); ``("start", a0)`` starts at original-unit value ``a0`` (e.g. warmup end);
  ``"none"`` keeps all points. All post-transient metrics use the same points.
* Pulses: tokens with τ in the window are grouped into ``n_bins`` equal-width x bins. Per-bin
  mean *empirical* pulse = −d/dx of the bin's mean loss curve (same smoothing as L′; the
  derivative commutes with the mean, so no per-token differencing is needed). Per-bin mean
  *fitted* pulse on the fine grid. Aligned pulses: each bin's empirical pulse is shifted by the
  bin's mean τ onto ``u = x − τ`` (NaN where ``τ_b + u`` leaves the window); fitted pulses are
  aligned per token (exact Eq. 4 restricted to the bin). Shared template ``g(u)`` (Eq. 4) = mean
  over in-window tokens of the per-token aligned fitted pulse (``template``; used for the
  reconstruction). ``template_emp`` is Eq. 4 with the empirical per-token derivative (each
  token's −dℓ_i/dx, linearly interpolated at ``τ_i + u``, averaged over the tokens for which
  ``τ_i + u`` lies in the window, ``|u| ≤ 12/median λ``); it is lower and wider than ``template``
  by the finite-difference resolution of the axis, and its reconstruction is reported as
  ``r2_reconstruction_emp_template``. Bin-aligned pulses are further broadened by the spread of
  τ inside a bin (bin width ``span/n_bins``).
* SVD of the aligned empirical pulse matrix (bins × u, bins with ≥ ``min_bin_count`` tokens whose
  aligned pulse is complete over ``|u| ≤ u_svd``; ``u_svd`` = 1.5 × the half-width at which the
  template falls to 1 % of its peak; where fewer than 4 empirical bin pulses are complete over that
  range - a window of a few decades cuts them - the empirical SVD range is narrowed, at most down to
  the template's half-maximum half-width, until 4 are; ``u_svd_emp`` and the template energy inside it,
  ``template_energy_in_u_svd_emp``, are reported), no centring or normalisation. Energy fraction of mode j =
  ``s_j² / Σ s²``; ``svd_energy1 = s1²/Σs²``, ``svd_energy2 = (s1²+s2²)/Σs²``. The same numbers
  for the fitted (token-aligned) pulses are reported with suffix ``_fit``.
* Reconstruction (Eq. 6): ``(p∗g)(x) = Σ_m p(x − u_m) g(u_m) h`` on a uniform fine grid of
  spacing ``h`` (``grid_points`` points across the window), with p the fraction of *all* valid
  tokens per unit x, histogrammed over the window extended by the template half-width (so pulses
  of tokens learned just outside the window are included).
* Metrics against the empirical derivative at post-transient axis points:
  ``R² = 1 − Σ(ŷ−y)²/Σ(y−ȳ)²`` and ``nerr = ‖ŷ − y‖₂/‖y‖₂``, for the sigmoid-implied
  derivative, the reconstruction and the power-law derivative. Mean-loss error:
  ``max_k |L_sig − L_emp| / |L_emp|`` over post-transient points.

Cost: one chunked pass over the N tokens; per chunk the largest temporaries are
``chunk × max(K, grid_points)``; nothing of size N × grid is ever materialised.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.interpolate import PchipInterpolator
from scipy.optimize import minimize_scalar
from scipy.signal import savgol_filter
from scipy.special import expit

from tokenscale import TokenscaleError, atomic
from tokenscale.io.fits import CATEGORY_NAMES

FINE_BINS = 1024  # fine τ histogram for the tail fit (bins across the window on x)
_STATUS_INVALID = 2

__all__ = [
    "SpectrumResult",
    "analyze",
    "write_summary",
    "derivative",
    "fit_power_law",
    "fit_truncated_power_law",
    "fit_quality",
    "CATEGORY_NAMES",
]


# ----------------------------------------------------------------------------------------------
# small numerical helpers


def _to_x(a: np.ndarray | float, transform: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if transform == "log10":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(a)
    return a


def _to_orig(x: np.ndarray | float, transform: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return 10.0**x if transform == "log10" else x


def _pulse(x: np.ndarray, tau: np.ndarray, lam: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Δλ/4 sech²(λ(x−τ)/2) for column vectors of parameters (n,1) and a row grid (1,F)."""
    z = np.abs(lam * (x - tau))
    e = np.exp(-z)
    return delta * lam * e / (1.0 + e) ** 2


def fit_quality(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(R², ‖pred − ref‖₂/‖ref‖₂) over points where both are finite."""
    pred = np.asarray(pred, float)
    ref = np.asarray(ref, float)
    ok = np.isfinite(pred) & np.isfinite(ref)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    p, r = pred[ok], ref[ok]
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    ss_res = float(np.sum((p - r) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    nrm = float(np.linalg.norm(r))
    return r2, (float(np.linalg.norm(p - r)) / nrm if nrm > 0 else float("nan"))


def derivative(
    y: np.ndarray,
    x: np.ndarray,
    smoothing: str = "none",
    *,
    savgol_window: int = 5,
    savgol_polyorder: int = 2,
) -> np.ndarray:
    """−dy/dx along the last axis of ``y`` at the (strictly increasing) points ``x``.

    ``"none"``: ``numpy.gradient`` (second order, non-uniform spacing aware). ``"savgol"``:
    PCHIP-resample onto a uniform grid of the same length, Savitzky–Golay derivative, PCHIP back.
    Rows containing NaN give NaN rows.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if smoothing not in ("none", "savgol"):
        raise TokenscaleError(f"smoothing must be 'none' or 'savgol', got {smoothing!r}")
    flat = y.reshape(-1, y.shape[-1])
    out = np.full_like(flat, np.nan)
    ok = np.all(np.isfinite(flat), axis=1)
    K = x.size
    if K < 3 or not ok.any():
        if K >= 2 and ok.any():
            out[ok] = -np.gradient(flat[ok], x, axis=1)
        return out.reshape(y.shape)
    yy = flat[ok]
    if smoothing == "none" or K < savgol_window:
        out[ok] = -np.gradient(yy, x, axis=1)
        return out.reshape(y.shape)
    win = savgol_window if savgol_window % 2 == 1 else savgol_window + 1
    xu = np.linspace(x[0], x[-1], K)
    uniform = np.allclose(np.diff(x), xu[1] - xu[0], rtol=1e-6, atol=0)
    yu = yy if uniform else PchipInterpolator(x, yy, axis=1)(xu)
    du = savgol_filter(yu, win, min(savgol_polyorder, win - 1), deriv=1, delta=xu[1] - xu[0],
                       axis=1, mode="interp")
    out[ok] = -(du if uniform else PchipInterpolator(xu, du, axis=1)(x))
    return out.reshape(y.shape)


# ----------------------------------------------------------------------------------------------
# aggregate power law L(a) = k a^-alpha + E


def _pl_profile(a: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """For each alpha: best (k, E) with k, E >= 0 and its SSE. Vectorised over alphas."""
    f = a[None, :] ** (-alphas[:, None])  # (A, n)
    n = a.size
    sf, sff = f.sum(1), (f * f).sum(1)
    sy, sfy = y.sum(), (f * y[None, :]).sum(1)
    det = n * sff - sf * sf
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (n * sfy - sf * sy) / det
        E = (sff * sy - sf * sfy) / det
    # E < 0 -> E = 0, k = <f,y>/<f,f>;  k < 0 -> k = 0, E = mean(y)
    k0 = np.where(sff > 0, sfy / sff, 0.0)
    bad_e = ~(E >= 0)
    k = np.where(bad_e, k0, k)
    E = np.where(bad_e, 0.0, E)
    bad_k = ~(k >= 0)
    k = np.where(bad_k, 0.0, k)
    E = np.where(bad_k, max(sy / n, 0.0), E)
    sse = ((k[:, None] * f + E[:, None] - y[None, :]) ** 2).sum(1)
    return k, E, sse


def fit_power_law(a: np.ndarray, y: np.ndarray, *, alpha_bounds=(1e-3, 5.0)) -> dict:
    """Least-squares fit of ``y = k a^−α + E`` (k, E ≥ 0): grid search over α then bounded refine.

    Returns ``{"k", "alpha", "E", "sse", "r2"}`` (NaN when fewer than 4 usable points)."""
    a = np.asarray(a, float)
    y = np.asarray(y, float)
    ok = np.isfinite(a) & np.isfinite(y) & (a > 0)
    a, y = a[ok], y[ok]
    nan = {"k": math.nan, "alpha": math.nan, "E": math.nan, "sse": math.nan, "r2": math.nan}
    if a.size < 4 or np.ptp(a) == 0:
        return nan
    a_s = a / np.exp(np.mean(np.log(a)))  # scale for conditioning; k rescaled below
    grid = np.geomspace(alpha_bounds[0], alpha_bounds[1], 240)
    _, _, sse = _pl_profile(a_s, y, grid)
    i = int(np.nanargmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]

    def obj(al):
        return float(_pl_profile(a_s, y, np.array([al]))[2][0])

    if hi > lo:
        r = minimize_scalar(obj, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
        al = float(r.x) if r.fun <= sse[i] else float(grid[i])
    else:
        al = float(grid[i])
    k, E, s = _pl_profile(a_s, y, np.array([al]))
    scale = np.exp(np.mean(np.log(a)))
    k_orig = float(k[0]) * scale**al
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"k": k_orig, "alpha": al, "E": float(E[0]), "sse": float(s[0]),
            "r2": 1.0 - float(s[0]) / ss_tot if ss_tot > 0 else math.nan}


# ----------------------------------------------------------------------------------------------
# truncated power-law tail (CSN x_min selection on a fine histogram)


def _trunc_mean(t: np.ndarray) -> np.ndarray:
    """Mean of v on [0,1] with density ∝ exp(−t v): 1/t − 1/(e^t − 1) (stable near 0)."""
    t = np.asarray(t, float)
    small = np.abs(t) < 1e-4
    ts = np.where(small, 1.0, t)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        big = 1.0 / ts - 1.0 / np.expm1(ts)
    return np.where(small, 0.5 - t / 12.0, big)


def _trunc_cdf(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """CDF at v ∈ [0,1] of density ∝ exp(−t v) on [0,1]."""
    small = np.abs(t) < 1e-8
    ts = np.where(small, 1.0, t)
    with np.errstate(over="ignore", invalid="ignore"):
        val = np.expm1(-ts * v) / np.expm1(-ts)
    return np.where(small, v, val)


def _solve_rate(q: np.ndarray) -> np.ndarray:
    """Solve _trunc_mean(t) = q for t (vectorised bisection; q ∈ (0,1))."""
    lo = np.full(q.shape, -500.0)
    hi = np.full(q.shape, 500.0)
    for _ in range(70):
        mid = 0.5 * (lo + hi)
        f = _trunc_mean(mid) - q  # decreasing in t
        lo = np.where(f > 0, mid, lo)
        hi = np.where(f > 0, hi, mid)
    return 0.5 * (lo + hi)


def _tail_scan(counts, slog, ln_edges, cand, min_tail):
    """MLE + KS for every candidate lower edge index in ``cand``; returns (gamma, ks, n_tail)."""
    ln_max = ln_edges[-1]
    cum_c = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail counts from edge j
    cum_s = np.concatenate([np.cumsum(slog[::-1])[::-1], [0.0]])
    n_t = cum_c[cand]
    ln_min = ln_edges[cand]
    r = ln_max - ln_min
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (cum_s[cand] / n_t - ln_min) / r
    q = np.clip(q, 1e-9, 1 - 1e-9)
    t = _solve_rate(q)
    gamma = t / r
    # KS at fine edges >= candidate: F_emp(edge_j) = 1 - tailcount(j)/n_t
    J = ln_edges.size
    jj = np.arange(J)[None, :]
    c = cand[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (ln_edges[None, :] - ln_min[:, None]) / r[:, None]
        f_emp = 1.0 - cum_c[None, :J] / n_t[:, None]
    f_mod = _trunc_cdf(np.clip(v, 0, 1), t[:, None])
    d = np.where(jj >= c, np.abs(f_emp - f_mod), 0.0)
    ks = d.max(1)
    ks = np.where(n_t >= min_tail, ks, np.inf)
    return gamma, ks, n_t


def fit_truncated_power_law(
    counts: np.ndarray,
    sum_ln_tau: np.ndarray,
    edges_orig: np.ndarray,
    *,
    min_tail: int = 50,
    min_tail_span: float = 10.0,
    max_candidates: int = 200,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Truncated power-law tail of a binned sample of τ (original units, edges increasing, > 0).

    ``counts[j]`` tokens in ``[edges_orig[j], edges_orig[j+1])`` with ``sum_ln_tau[j]`` = Σ ln τ.
    Density ``∝ τ^−β`` on ``[τ_min, edges_orig[-1]]``; β by MLE per candidate ``τ_min`` (fine
    edges with ≥ ``min_tail`` tokens above and ``τ_max/τ_min ≥ min_tail_span``), ``τ_min`` by
    minimum KS distance. Bootstrap: multinomial resampling of the counts, ``τ_min`` re-selected.
    """
    counts = np.asarray(counts, float)
    slog = np.asarray(sum_ln_tau, float)
    edges_orig = np.asarray(edges_orig, float)
    out = {"beta": math.nan, "beta_ci": [math.nan, math.nan], "xmin": math.nan, "ks": math.nan,
           "n_tail": 0, "xmax": float(edges_orig[-1]), "n_boot_ok": 0, "note": ""}
    pos = edges_orig[:-1] > 0
    if not np.any(pos) or edges_orig[-1] <= 0:
        out["note"] = "no positive learning times in the window"
        return out
    first = int(np.argmax(pos))
    counts, slog, edges_orig = counts[first:], slog[first:], edges_orig[first:]
    ln_edges = np.log(edges_orig)
    ok_span = ln_edges[:-1] <= ln_edges[-1] - math.log(min_tail_span)
    cand_all = np.nonzero(ok_span)[0]
    if cand_all.size == 0:
        out["note"] = f"window spans less than a factor {min_tail_span:g}"
        return out
    if cand_all.size > max_candidates:
        cand_all = cand_all[np.unique(np.linspace(0, cand_all.size - 1, max_candidates).round()
                                      .astype(int))]

    def one(c, s):
        cand = cand_all[np.concatenate([np.cumsum(c[::-1])[::-1]])[cand_all] >= min_tail]
        if cand.size == 0:
            return None
        g, ks, nt = _tail_scan(c, s, ln_edges, cand, min_tail)
        i = int(np.argmin(ks))
        return g[i], ks[i], nt[i], cand[i]

    best = one(counts, slog)
    if best is None:
        out["note"] = f"fewer than {min_tail} learning times in any admissible tail"
        return out
    g, ks, nt, ci_ = best
    out.update(beta=1.0 + float(g), xmin=float(edges_orig[ci_]), ks=float(ks), n_tail=int(nt))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        n = int(counts.sum())
        p = counts / counts.sum()
        mean_ln = np.divide(slog, counts, out=np.zeros_like(slog), where=counts > 0)
        bs = []
        for _ in range(n_boot):
            c = rng.multinomial(n, p).astype(float)
            r = one(c, c * mean_ln)
            if r is not None:
                bs.append(1.0 + r[0])
        if bs:
            lo = (1 - ci) / 2 * 100
            out["beta_ci"] = [float(np.percentile(bs, lo)), float(np.percentile(bs, 100 - lo))]
            out["beta_se"] = float(np.std(bs, ddof=1)) if len(bs) > 1 else math.nan
            out["n_boot_ok"] = len(bs)
    return out


# ----------------------------------------------------------------------------------------------
# result


@dataclass
class SpectrumResult:
    """All arrays of the decomposition; ``summary()`` gives the JSON-able numbers."""

    transform: str
    axis_x: np.ndarray  # (K,)
    axis_orig: np.ndarray  # (K,)
    post_mask: np.ndarray  # (K,) bool, post-transient points
    transient_start_x: float
    counts: dict  # token bookkeeping
    category_counts: dict  # all rows / valid rows per category name
    # aggregate curves on the axis points
    loss_emp: np.ndarray
    loss_sig: np.ndarray
    deriv_emp: np.ndarray  # −dL/dx
    deriv_sig: np.ndarray
    deriv_rec: np.ndarray
    deriv_pl: np.ndarray
    loss_pl: np.ndarray
    # fine uniform grid across the window
    grid_x: np.ndarray  # (F,)
    deriv_sig_grid: np.ndarray
    deriv_rec_grid: np.ndarray
    # power law
    powerlaw: dict
    # spectrum (n_bins equal-width x bins over the window)
    bin_edges_x: np.ndarray  # (B+1,)
    bin_count: np.ndarray  # (B,)
    bin_mean_tau_x: np.ndarray  # (B,) NaN for empty bins
    density_x: np.ndarray  # fraction of valid tokens per unit x
    density_orig: np.ndarray  # fraction of valid tokens per original unit
    tail: dict
    # pulses
    pulse_emp: np.ndarray  # (B, K) per-bin mean empirical pulse at the axis points
    pulse_fit_grid: np.ndarray  # (B, F) per-bin mean fitted pulse on grid_x
    u_grid: np.ndarray  # (U,) relative axis u = x − τ
    aligned_emp: np.ndarray  # (B, U) bin-aligned empirical pulses (NaN outside the window)
    aligned_fit: np.ndarray  # (B, U) token-aligned fitted pulses per bin
    template: np.ndarray  # (U,) g(u), Eq. 4 from fitted pulses of in-window tokens
    template_emp: np.ndarray  # (U,) Eq. 4 from empirical per-token derivatives (NaN off-range)
    deriv_rec_emp: np.ndarray  # (K,) p∗g with the empirical template
    svd: dict
    # metrics and settings
    metrics: dict
    settings: dict
    # token-level views (small samples)
    sample_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    sample_losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sample_params: dict = field(default_factory=dict)  # tau, lam, delta, post, category
    category_examples: dict = field(default_factory=dict)  # name -> indices into sample_*
    scatter: dict = field(default_factory=dict)  # tau, tau_orig, lam, delta subsample

    def summary(self) -> dict:
        """JSON-serialisable numbers (NaN/inf become None)."""
        pl = self.powerlaw
        tl = self.tail
        out = {
            "transform": self.transform,
            "n_axis_points": int(self.axis_x.size),
            "n_post_transient_points": int(self.post_mask.sum()),
            "transient_start": float(_to_orig(self.transient_start_x, self.transform)),
            "transient_start_x": self.transient_start_x,
            "tokens": dict(self.counts),
            "category_counts": dict(self.category_counts),
            "power_law": {k: pl[k] for k in ("k", "alpha", "E", "r2", "alpha_ci", "E_ci",
                                              "k_ci", "n_points", "n_boot_ok", "bootstrap")},
            "tail": {k: tl[k] for k in ("beta", "beta_ci", "xmin", "xmax", "ks", "n_tail",
                                        "n_boot_ok", "note", "method")},
            "alpha_fit": pl["alpha"],
            "alpha_fit_ci": pl["alpha_ci"],
            "alpha_predicted": tl["beta"] - 1.0,
            "alpha_predicted_ci": [c - 1.0 for c in tl["beta_ci"]],
            "svd": {k: v for k, v in self.svd.items() if not isinstance(v, np.ndarray)},
            "metrics": dict(self.metrics),
            "settings": dict(self.settings),
        }
        return _jsonable(out)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o


def write_summary(result: SpectrumResult, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Atomically write ``result.summary()`` merged with ``extra`` (top level) as JSON.

    Keys of ``extra`` must not collide with summary keys."""
    data = result.summary()
    for k, v in (extra or {}).items():
        if k in data:
            raise TokenscaleError(f"extra key {k!r} collides with a summary key")
        data[k] = _jsonable(v)
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------
# main entry point


def _transient_start(rule, x: np.ndarray, loss: np.ndarray, transform: str) -> tuple[float, str]:
    if rule is None or (isinstance(rule, str) and rule == "none"):
        return float(x[0]), "none"
    if isinstance(rule, str) and rule == "peak":
        return float(x[int(np.nanargmax(loss))]), "peak"
    if isinstance(rule, str) and rule == "dpeak":
        # the power-law regime starts where the loss falls fastest per unit x: before that the mean loss
        # is still on its initial plateau (random-init loss), which no k*a^-alpha + E describes
        d = -np.gradient(np.asarray(loss, dtype=np.float64), x)
        if not np.isfinite(d).any():
            raise TokenscaleError("transient 'dpeak': the empirical mean loss has no finite derivative")
        return float(x[int(np.nanargmax(d))]), "dpeak"
    if isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[0] == "start":
        xs = float(_to_x(float(rule[1]), transform))
        if not math.isfinite(xs):
            raise TokenscaleError(f"transient start {rule[1]!r} is not valid on a {transform} axis")
        return xs, f"start={float(rule[1]):g}"
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        f = float(rule)
        if not 0.0 <= f < 1.0:
            raise TokenscaleError(f"transient fraction must be in [0, 1), got {f}")
        return float(x[0] + f * (x[-1] - x[0])), f"frac={f:g}"
    raise TokenscaleError(f"transient must be a fraction, 'peak', 'dpeak', 'none' or ('start', a), got {rule!r}")


def _onehot(idx: np.ndarray, n_rows: int) -> sparse.csr_matrix:
    """(n_rows × len(idx)) 0/1 matrix; entries with idx < 0 are dropped."""
    keep = idx >= 0
    cols = np.nonzero(keep)[0]
    return sparse.csr_matrix((np.ones(cols.size), (idx[keep], cols)), shape=(n_rows, idx.size))


def analyze(
    losses,
    fit,
    *,
    n_bins: int = 40,
    transient="dpeak",
    smoothing: str = "none",
    savgol_window: int = 5,
    savgol_polyorder: int = 2,
    n_boot: int = 200,
    seed: int = 0,
    grid_points: int = 256,
    n_groups: int = 100,
    min_bin_count: int = 20,
    min_tail: int = 50,
    min_tail_span: float = 10.0,
    include_max_iter: bool = True,
    chunk_elems: int = 1 << 21,
    n_samples: int = 120,
    n_scatter: int = 20000,
) -> SpectrumResult:
    """Pulse–spectrum decomposition of ``losses`` (N, K) given token sigmoid fits ``fit``.

    ``losses`` may be any array-like supporting row slicing (numpy array, memmap, h5py dataset).
    See the module docstring for every definition; ``n_boot`` is used for both bootstraps.
    """
    # ---------------------------------------------------------------- validate inputs
    if not hasattr(losses, "shape") or len(losses.shape) != 2:
        raise TokenscaleError("losses must be a 2-D (N, K) array")
    N, K = (int(s) for s in losses.shape)
    transform = str(getattr(fit, "transform", ""))
    if transform not in ("log10", "linear"):
        raise TokenscaleError(f"fit.transform must be 'log10' or 'linear', got {transform!r}")
    x = np.asarray(fit.axis, dtype=float).ravel()
    a_orig = np.asarray(fit.axis_orig, dtype=float).ravel()
    if x.size != K or a_orig.size != K:
        raise TokenscaleError(f"fit axis has {x.size} points but losses have {K} columns")
    if K < 3:
        raise TokenscaleError(f"need at least 3 axis points, got {K}")
    if not (np.all(np.isfinite(x)) and np.all(np.diff(x) > 0)):
        raise TokenscaleError("fit.axis must be finite and strictly increasing")
    if n_bins < 2:
        raise TokenscaleError(f"n_bins must be >= 2, got {n_bins}")
    if grid_points < 16:
        raise TokenscaleError(f"grid_points must be >= 16, got {grid_points}")
    par = {}
    for name in ("tau", "tau_orig", "lam", "delta", "post", "status", "category"):
        arr = np.asarray(getattr(fit, name)).ravel()
        if arr.size != N:
            raise TokenscaleError(f"fit.{name} has {arr.size} entries but losses have {N} rows")
        par[name] = arr
    tau = par["tau"].astype(float)
    lam = par["lam"].astype(float)
    delta = par["delta"].astype(float)
    post = par["post"].astype(float)
    tau_o = par["tau_orig"].astype(float)
    status = par["status"].astype(int)
    category = par["category"].astype(int)
    fitvalid = (status != _STATUS_INVALID) & np.isfinite(tau) & np.isfinite(lam) \
        & np.isfinite(delta) & np.isfinite(post)
    if not include_max_iter:
        fitvalid &= status != 1
    if not fitvalid.any():
        raise TokenscaleError(f"no valid token fits among {N} rows")

    x0, x1 = float(x[0]), float(x[-1])
    span = x1 - x0
    B = int(n_bins)
    bin_edges = np.linspace(x0, x1, B + 1)
    F = int(grid_points)
    grid = np.linspace(x0, x1, F)
    h = grid[1] - grid[0]
    M = F - 1  # template half-width = one window span (in grid steps)
    u_half = h * np.arange(M + 1)  # u >= 0; g is symmetric
    u_grid = h * np.arange(-M, M + 1)
    ext0 = x0 - M * h  # extended histogram grid for p (centres at ext0 + j h)
    n_ext = F + 2 * M
    fine_edges = np.linspace(x0, x1, FINE_BINS + 1)
    G = max(int(n_groups), 2)

    in_win = fitvalid & (tau >= x0) & (tau <= x1)
    bin_of = np.where(in_win, np.clip(np.floor((tau - x0) / span * B).astype(np.int64), 0, B - 1), -1)
    fine_of = np.where(in_win, np.clip(np.floor((tau - x0) / span * FINE_BINS).astype(np.int64),
                                       0, FINE_BINS - 1), -1)
    ext_of = np.full(N, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        je = np.rint((tau - ext0) / h)
    ok_e = fitvalid & np.isfinite(je) & (je >= 0) & (je < n_ext)
    ext_of[ok_e] = je[ok_e].astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_tau_o = np.where(tau_o > 0, np.log(tau_o), np.nan)
    # u-range of the per-token empirical template: 12/median(λ) covers the pulse (sech² < 1e-4)
    lam_med = float(np.median(np.abs(lam[in_win]))) if in_win.any() else math.nan
    ue_half = min(u_half[-1], 12.0 / lam_med) if lam_med > 0 else u_half[-1]
    cols_e = np.abs(u_grid) <= ue_half + 1e-12
    ue = u_grid[cols_e]

    rng = np.random.default_rng(seed)

    # ---------------------------------------------------------------- accumulators
    acc_loss = np.zeros(K)
    acc_sig = np.zeros(K)
    acc_pk = np.zeros(K)
    acc_grp = np.zeros((G, K))
    cnt_grp = np.zeros(G)
    acc_bin_loss = np.zeros((B, K))
    acc_bin_pf = np.zeros((B, F))
    acc_bin_al = np.zeros((B, M + 1))
    acc_bin_n = np.zeros(B)
    acc_bin_tau = np.zeros(B)
    acc_sig_grid = np.zeros(F)
    acc_g = np.zeros(M + 1)
    acc_ext = np.zeros(n_ext)
    acc_fine_c = np.zeros(FINE_BINS)
    acc_fine_s = np.zeros(FINE_BINS)
    acc_ge = np.zeros(ue.size)
    cnt_ge = np.zeros(ue.size)
    n_valid = 0
    n_nonfinite = 0
    n_in_win = 0
    final_valid = np.zeros(N, dtype=bool)

    chunk = max(64, int(chunk_elems // max(K, F, M + 1, ue.size)))
    for i0 in range(0, N, chunk):
        i1 = min(N, i0 + chunk)
        L = np.asarray(losses[i0:i1], dtype=float)
        rowfin = np.all(np.isfinite(L), axis=1)
        fv = fitvalid[i0:i1]
        n_nonfinite += int(np.sum(fv & ~rowfin))
        v = fv & rowfin
        final_valid[i0:i1] = v
        if not v.any():
            continue
        sel = np.nonzero(v)[0] + i0
        Lv = L[v]
        n = sel.size
        n_valid += n
        t_, l_, d_, p_ = (tau[sel][:, None], lam[sel][:, None], delta[sel][:, None],
                          post[sel][:, None])
        acc_loss += Lv.sum(0)
        grp = rng.integers(0, G, size=n)
        acc_grp += _onehot(grp, G) @ Lv
        cnt_grp += np.bincount(grp, minlength=G)
        # sigmoid-implied loss and pulse at the axis points
        s = expit(-l_ * (x[None, :] - t_))
        acc_sig += (p_ + d_ * s).sum(0)
        acc_pk += (d_ * l_ * s * (1.0 - s)).sum(0)
        # fine grid pulses (window) + per-bin sums
        pf = _pulse(grid[None, :], t_, l_, d_)
        acc_sig_grid += pf.sum(0)
        b = bin_of[sel]
        inw = b >= 0
        if inw.any():
            Hb = _onehot(b, B)
            acc_bin_loss += Hb @ Lv
            acc_bin_pf += Hb @ pf
            acc_bin_n += np.bincount(b[inw], minlength=B)
            acc_bin_tau += np.bincount(b[inw], weights=tau[sel][inw], minlength=B)
            n_in_win += int(inw.sum())
            # token-aligned fitted pulses (u >= 0) of in-window tokens
            pa = _pulse(u_half[None, :], 0.0, l_[inw], d_[inw])
            acc_g += pa.sum(0)
            acc_bin_al += _onehot(b[inw], B) @ pa
            fb = fine_of[sel][inw]
            acc_fine_c += np.bincount(fb, minlength=FINE_BINS)
            lt = ln_tau_o[sel][inw]
            acc_fine_s += np.bincount(fb, weights=np.nan_to_num(lt), minlength=FINE_BINS)
            # Eq. 4 with the empirical per-token derivative: −dℓ_i/dx sampled at τ_i + u
            Dw = derivative(Lv[inw], x, smoothing, savgol_window=savgol_window,
                            savgol_polyorder=savgol_polyorder)
            P = tau[sel][inw][:, None] + ue[None, :]
            okp = (P >= x0) & (P <= x1)
            j = np.clip(np.searchsorted(x, P.ravel(), side="right").reshape(P.shape) - 1, 0, K - 2)
            wgt = (P - x[j]) / (x[j + 1] - x[j])
            rows = np.arange(Dw.shape[0])[:, None]
            val = Dw[rows, j] * (1.0 - wgt) + Dw[rows, j + 1] * wgt
            acc_ge += np.where(okp, val, 0.0).sum(0)
            cnt_ge += okp.sum(0)
        e = ext_of[sel]
        e = e[e >= 0]
        acc_ext += np.bincount(e, minlength=n_ext)

    if n_valid == 0:
        raise TokenscaleError(f"no valid tokens: {int(fitvalid.sum())} valid fits but every such "
                              f"loss row has non-finite values")

    # ---------------------------------------------------------------- aggregate curves
    loss_emp = acc_loss / n_valid
    loss_sig = acc_sig / n_valid
    dkw = dict(savgol_window=savgol_window, savgol_polyorder=savgol_polyorder)
    deriv_emp = derivative(loss_emp, x, smoothing, **dkw)
    deriv_sig = acc_pk / n_valid
    deriv_sig_grid = acc_sig_grid / n_valid

    ts_x, ts_rule = _transient_start(transient, x, loss_emp, transform)
    post_mask = x >= ts_x - 1e-12
    if post_mask.sum() < 3:
        hint = (" (the loss is still speeding up at the end of the run: train longer, or set "
                "analysis.transient to a fraction or 'none')" if ts_rule == "dpeak" else "")
        raise TokenscaleError(f"transient rule {ts_rule} leaves {int(post_mask.sum())} axis points; "
                              f"need >= 3{hint}")

    # ---------------------------------------------------------------- power law + bootstrap
    a_post = a_orig[post_mask]
    pl = fit_power_law(a_post, loss_emp[post_mask])
    pl["n_points"] = int(np.sum(post_mask & (a_orig > 0)))
    pl["bootstrap"] = f"token groups ({G} random groups resampled with replacement)"
    boots = []
    ok_g = cnt_grp > 0
    if n_boot > 0 and math.isfinite(pl["alpha"]) and ok_g.sum() >= 2:
        gi = np.nonzero(ok_g)[0]
        rb = np.random.default_rng(seed + 1)
        for _ in range(n_boot):
            w = np.bincount(rb.integers(0, gi.size, gi.size), minlength=gi.size).astype(float)
            Lb = (w @ acc_grp[gi]) / (w @ cnt_grp[gi])
            r = fit_power_law(a_post, Lb[post_mask])
            if math.isfinite(r["alpha"]):
                boots.append((r["k"], r["alpha"], r["E"]))
    if boots:
        bb = np.array(boots)
        pct = lambda c: [float(np.percentile(bb[:, c], 2.5)), float(np.percentile(bb[:, c], 97.5))]
        pl.update(k_ci=pct(0), alpha_ci=pct(1), E_ci=pct(2), n_boot_ok=len(boots))
    else:
        pl.update(k_ci=[math.nan] * 2, alpha_ci=[math.nan] * 2, E_ci=[math.nan] * 2, n_boot_ok=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        loss_pl = np.where(a_orig > 0, pl["k"] * a_orig ** (-pl["alpha"]) + pl["E"], np.nan)
        if transform == "log10":
            deriv_pl = pl["alpha"] * pl["k"] * math.log(10) * a_orig ** (-pl["alpha"])
        else:
            deriv_pl = pl["alpha"] * pl["k"] * a_orig ** (-pl["alpha"] - 1.0)
        deriv_pl = np.where(a_orig > 0, deriv_pl, np.nan)

    # ---------------------------------------------------------------- spectrum + tail
    width_x = np.diff(bin_edges)
    edges_o = _to_orig(bin_edges, transform)
    density_x = acc_bin_n / (n_valid * width_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        density_orig = acc_bin_n / (n_valid * np.diff(edges_o))
        bin_mean_tau = np.where(acc_bin_n > 0, acc_bin_tau / acc_bin_n, np.nan)
    tail = fit_truncated_power_law(acc_fine_c, acc_fine_s, _to_orig(fine_edges, transform),
                                   min_tail=min_tail, min_tail_span=min_tail_span, n_boot=n_boot,
                                   seed=seed + 2)
    tail["method"] = ("truncated power-law MLE on [xmin, window end]; xmin by KS minimisation "
                      "(Clauset-Shalizi-Newman); CI by token bootstrap with xmin re-selected")
    tail["fraction_in_window"] = n_in_win / n_valid

    # ---------------------------------------------------------------- pulses, template, SVD
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_mean_loss = np.where(acc_bin_n[:, None] > 0, acc_bin_loss / acc_bin_n[:, None], np.nan)
        pulse_fit_grid = np.where(acc_bin_n[:, None] > 0, acc_bin_pf / acc_bin_n[:, None], np.nan)
        al_half = np.where(acc_bin_n[:, None] > 0, acc_bin_al / acc_bin_n[:, None], np.nan)
    pulse_emp = derivative(bin_mean_loss, x, smoothing, **dkw)
    aligned_fit = np.concatenate([al_half[:, :0:-1], al_half], axis=1)
    g_half = acc_g / max(n_in_win, 1)
    template = np.concatenate([g_half[:0:-1], g_half])
    template_emp = np.full(u_grid.size, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        template_emp[cols_e] = np.where(cnt_ge >= min_bin_count, acc_ge / cnt_ge, np.nan)
    aligned_emp = np.full((B, u_grid.size), np.nan)
    for bi in range(B):
        if acc_bin_n[bi] > 0 and np.all(np.isfinite(pulse_emp[bi])):
            xs = bin_mean_tau[bi] + u_grid
            inside = (xs >= x0) & (xs <= x1)
            aligned_emp[bi, inside] = np.interp(xs[inside], x, pulse_emp[bi])

    # SVD window from the template's support
    gmax = float(np.max(np.abs(g_half))) if n_in_win else 0.0
    if gmax > 0:
        above = np.nonzero(np.abs(g_half) >= 0.01 * gmax)[0]
        u_svd = min(1.5 * u_half[above[-1]] if above.size else u_half[-1], u_half[-1])
        u_svd = max(u_svd, 3 * h)
    else:
        u_svd = u_half[-1]
    cols = np.abs(u_grid) <= u_svd + 1e-12
    svd = {"u_svd": float(u_svd), "definition": "energy_j = s_j^2 / sum(s^2); no centring"}
    # Empirical bin pulses are cut by the window edges: on a short window (a few decades) no bin may be
    # complete over |u| <= u_svd.  Then the window is narrowed, down to the template's half-maximum
    # half-width, until at least 4 bins are complete; the template energy it keeps is reported.
    cols_emp, u_emp = cols, u_svd
    populated = acc_bin_n >= min_bin_count
    if gmax > 0:
        half_max = np.nonzero(np.abs(g_half) >= 0.5 * gmax)[0]
        u_core = u_half[half_max[-1]] if half_max.size else u_half[0]
        for u_try in u_half[::-1]:
            if u_try > u_svd + 1e-12:
                continue
            if u_try < u_core - 1e-12:
                break
            c = np.abs(u_grid) <= u_try + 1e-12
            if int((populated & np.all(np.isfinite(aligned_emp[:, c]), axis=1)).sum()) >= 4:
                cols_emp, u_emp = c, float(u_try)
                break
    g2 = template**2
    svd["u_svd_emp"] = float(u_emp)
    svd["template_energy_in_u_svd_emp"] = float(g2[cols_emp].sum() / g2.sum()) if g2.sum() > 0 else math.nan

    def _svd(mat, tag):
        cols = cols_emp if tag == "" else cols_fit
        use = (acc_bin_n >= min_bin_count) & np.all(np.isfinite(mat[:, cols]), axis=1)
        svd[f"n_bins_used{tag}"] = int(use.sum())
        if use.sum() < 2:
            svd.update({f"svd_energy1{tag}": math.nan, f"svd_energy2{tag}": math.nan})
            svd[f"singular_values{tag}"] = np.zeros(0)
            svd[f"vectors{tag}"] = np.zeros((0, int(cols.sum())))
            svd[f"bins_used{tag}"] = use
            return
        U_, S_, Vt = np.linalg.svd(mat[use][:, cols], full_matrices=False)
        en = S_**2 / np.sum(S_**2)
        # sign convention: leading vector positive at its largest magnitude
        for j in range(Vt.shape[0]):
            if Vt[j, np.argmax(np.abs(Vt[j]))] < 0:
                Vt[j] *= -1
        svd.update({f"svd_energy1{tag}": float(en[0]),
                    f"svd_energy2{tag}": float(en[:2].sum()) if en.size > 1 else float(en[0])})
        svd[f"singular_values{tag}"] = S_
        svd[f"vectors{tag}"] = Vt[:4]
        svd[f"bins_used{tag}"] = use

    cols_fit = cols
    _svd(aligned_emp, "")
    _svd(aligned_fit, "_fit")
    svd["u"] = u_grid[cols_emp]
    svd["u_fit"] = u_grid[cols_fit]
    svd["source"] = "empirical per-bin pulses aligned at the bin mean tau"

    # ---------------------------------------------------------------- reconstruction (Eq. 6)
    p_ext = acc_ext / n_valid  # fraction of valid tokens per grid cell (= p · h)
    rec_ext = np.convolve(p_ext, template, mode="same")
    deriv_rec_grid = rec_ext[M:M + F]
    deriv_rec = np.interp(x, grid, deriv_rec_grid)
    rec_emp_ext = np.convolve(p_ext, np.nan_to_num(template_emp), mode="same")
    deriv_rec_emp = np.interp(x, grid, rec_emp_ext[M:M + F])

    # ---------------------------------------------------------------- metrics
    pm = post_mask
    r2_sig, ne_sig = fit_quality(deriv_sig[pm], deriv_emp[pm])
    r2_rec, ne_rec = fit_quality(deriv_rec[pm], deriv_emp[pm])
    r2_pl, ne_pl = fit_quality(deriv_pl[pm], deriv_emp[pm])
    r2_rs, ne_rs = fit_quality(deriv_rec[pm], deriv_sig[pm])
    r2_re, ne_re = fit_quality(deriv_rec_emp[pm], deriv_emp[pm])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(loss_sig - loss_emp) / np.abs(loss_emp)
    fwhm = _fwhm(u_grid, template)
    metrics = {
        "r2_sigmoid_deriv": r2_sig, "nerr_sigmoid_deriv": ne_sig,
        "r2_reconstruction": r2_rec, "nerr_reconstruction": ne_rec,
        "r2_powerlaw_deriv": r2_pl, "nerr_powerlaw_deriv": ne_pl,
        "r2_reconstruction_vs_sigmoid": r2_rs, "nerr_reconstruction_vs_sigmoid": ne_rs,
        "r2_reconstruction_emp_template": r2_re, "nerr_reconstruction_emp_template": ne_re,
        "template_emp_fwhm_x": _fwhm(u_grid, np.nan_to_num(template_emp, nan=-np.inf)),
        "template_emp_peak_ratio": (float(np.nanmax(template_emp)) / float(np.max(template))
                                    if np.any(np.isfinite(template_emp)) and np.max(template) > 0
                                    else math.nan),
        "mean_loss_max_rel_err": float(np.nanmax(rel[pm])),
        "mean_loss_mean_rel_err": float(np.nanmean(rel[pm])),
        "svd_energy1": svd["svd_energy1"], "svd_energy2": svd["svd_energy2"],
        "svd_energy1_fit": svd["svd_energy1_fit"], "svd_energy2_fit": svd["svd_energy2_fit"],
        "template_fwhm_x": fwhm,
        "template_area": float(np.sum(template) * h),
        "grid_h_x": float(h),
        "template_resolved": bool(math.isfinite(fwhm) and fwhm >= 4 * h),
    }

    # ---------------------------------------------------------------- bookkeeping + samples
    names = list(CATEGORY_NAMES)
    cat_all = np.bincount(np.clip(category, 0, len(names)), minlength=len(names) + 1)
    cat_val = np.bincount(np.clip(category[final_valid], 0, len(names)), minlength=len(names) + 1)
    category_counts = {nm: {"all": int(cat_all[i]), "valid": int(cat_val[i])}
                       for i, nm in enumerate(names)}
    if cat_all[len(names)] and np.any(category >= len(names)):
        category_counts["other"] = {"all": int(np.sum((category < 0) | (category >= len(names)))),
                                    "valid": int(np.sum(final_valid & ((category < 0)
                                                                        | (category >= len(names)))))}
    counts = {
        "n_tokens": N, "n_valid": n_valid, "n_invalid_fit": int(np.sum(~fitvalid)),
        "n_nonfinite_loss": n_nonfinite, "n_max_iter": int(np.sum(status == 1)),
        "n_status_invalid": int(np.sum(status == _STATUS_INVALID)),
        "n_in_window": n_in_win,
        "n_tau_before_window": int(np.sum(final_valid & (tau < x0))),
        "n_tau_after_window": int(np.sum(final_valid & (tau > x1))),
    }
    rs = np.random.default_rng(seed + 3)
    vidx = np.nonzero(final_valid)[0]
    examples: dict[str, np.ndarray] = {}
    picks = []
    for ci, nm in enumerate(names):
        cand = vidx[category[vidx] == ci]
        k = min(4, cand.size)
        pick = np.sort(rs.choice(cand, k, replace=False)) if k else np.zeros(0, int)
        examples[nm] = pick
        picks.append(pick)
    win_idx = vidx[(tau[vidx] >= x0) & (tau[vidx] <= x1)]
    coll = np.sort(rs.choice(win_idx, min(n_samples, win_idx.size), replace=False)) \
        if win_idx.size else np.zeros(0, int)
    sample_idx = np.unique(np.concatenate(picks + [coll]).astype(np.int64))
    sample_losses = np.asarray(losses[sample_idx], dtype=float) if sample_idx.size \
        else np.zeros((0, K))
    pos = {int(i): j for j, i in enumerate(sample_idx)}
    category_examples = {nm: np.array([pos[int(i)] for i in ex], dtype=int)
                         for nm, ex in examples.items()}
    sample_params = {"tau": tau[sample_idx], "tau_orig": tau_o[sample_idx], "lam": lam[sample_idx],
                     "delta": delta[sample_idx], "post": post[sample_idx],
                     "category": category[sample_idx],
                     "collapse": np.array([pos[int(i)] for i in coll], dtype=int)}
    sc = np.sort(rs.choice(vidx, min(n_scatter, vidx.size), replace=False))
    scatter = {"tau": tau[sc], "tau_orig": tau_o[sc], "lam": lam[sc], "delta": delta[sc],
               "category": category[sc], "in_window": (tau[sc] >= x0) & (tau[sc] <= x1)}

    settings = {"n_bins": B, "transient": ts_rule, "smoothing": smoothing,
                "savgol_window": savgol_window, "savgol_polyorder": savgol_polyorder,
                "n_boot": n_boot, "seed": seed, "grid_points": F, "n_groups": G,
                "min_bin_count": min_bin_count, "min_tail": min_tail,
                "min_tail_span": min_tail_span, "include_max_iter": include_max_iter,
                "fine_bins": FINE_BINS}

    return SpectrumResult(
        transform=transform, axis_x=x, axis_orig=a_orig, post_mask=post_mask,
        transient_start_x=ts_x, counts=counts, category_counts=category_counts,
        loss_emp=loss_emp, loss_sig=loss_sig, deriv_emp=deriv_emp, deriv_sig=deriv_sig,
        deriv_rec=deriv_rec, deriv_pl=deriv_pl, loss_pl=loss_pl, grid_x=grid,
        deriv_sig_grid=deriv_sig_grid, deriv_rec_grid=deriv_rec_grid, powerlaw=pl,
        bin_edges_x=bin_edges, bin_count=acc_bin_n, bin_mean_tau_x=bin_mean_tau,
        density_x=density_x, density_orig=density_orig, tail=tail, pulse_emp=pulse_emp,
        pulse_fit_grid=pulse_fit_grid, u_grid=u_grid, aligned_emp=aligned_emp,
        aligned_fit=aligned_fit, template=template, template_emp=template_emp,
        deriv_rec_emp=deriv_rec_emp, svd=svd, metrics=metrics, settings=settings,
        sample_idx=sample_idx, sample_losses=sample_losses, sample_params=sample_params,
        category_examples=category_examples, scatter=scatter,
    )


def _fwhm(u: np.ndarray, g: np.ndarray) -> float:
    if g.size == 0 or not np.any(np.isfinite(g)):
        return math.nan
    gm = float(np.nanmax(g))
    if gm <= 0:
        return math.nan
    above = np.nonzero(g >= gm / 2)[0]
    return float(u[above[-1]] - u[above[0]]) if above.size else math.nan
