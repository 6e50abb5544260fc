"""Aggregate power law ``L(a) = k a^−α + E`` (k, E ≥ 0) by least squares, and its token-group bootstrap."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["fit_power_law", "power_law_stage"]


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


def _bootstrap(a_post, post_mask, grp, grp_n, n_boot: int, seed: int) -> list[tuple[float, float, float]]:
    """Refits of the power law on token-group resamples (groups drawn with replacement)."""
    ok_g = grp_n > 0
    if n_boot <= 0 or ok_g.sum() < 2:
        return []
    gi = np.nonzero(ok_g)[0]
    rb = np.random.default_rng(seed + 1)
    boots = []
    for _ in range(n_boot):
        w = np.bincount(rb.integers(0, gi.size, gi.size), minlength=gi.size).astype(float)
        Lb = (w @ grp[gi]) / (w @ grp_n[gi])
        r = fit_power_law(a_post, Lb[post_mask])
        if math.isfinite(r["alpha"]):
            boots.append((r["k"], r["alpha"], r["E"]))
    return boots


def power_law_stage(a_orig, post_mask, loss_emp, grp, grp_n, *, transform: str, n_boot: int, seed: int,
                    n_groups: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Power law on the post-transient mean loss with its group-bootstrap CI; returns ``(fit, L_pl, −dL_pl/dx)``
    on the axis points (x per decade for ``log10``)."""
    a_post = a_orig[post_mask]
    pl = fit_power_law(a_post, loss_emp[post_mask])
    pl["n_points"] = int(np.sum(post_mask & (a_orig > 0)))
    pl["bootstrap"] = f"token groups ({n_groups} random groups resampled with replacement)"
    boots = _bootstrap(a_post, post_mask, grp, grp_n, n_boot, seed) if math.isfinite(pl["alpha"]) else []
    if boots:
        bb = np.array(boots)
        pct = lambda c: [float(np.percentile(bb[:, c], 2.5)), float(np.percentile(bb[:, c], 97.5))]  # noqa: E731
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
    return pl, loss_pl, deriv_pl
