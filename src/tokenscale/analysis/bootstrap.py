"""Bootstrap confidence intervals over token instances: group means and Spearman's ρ (numpy and scipy only).

* **mean CI**: a percentile bootstrap over token instances (:func:`group_means`); **rank correlation**: Spearman
  ρ with a percentile bootstrap CI over instance pairs (:func:`spearman_ci`).
* **bootstrap size**: a sample of ``n <= max_n`` is bootstrapped with :func:`scipy.stats.bootstrap` (percentile,
  resamples of size n). For ``n > max_n`` (millions of tokens) resamples have size ``m = max_n`` (the
  "m-out-of-n" bootstrap) and the percentile interval is rescaled to size n: ``est + sqrt(m/n)·(q − est)``
  with ``q`` the replicate quantiles. This is valid for √n-consistent statistics (a mean, Spearman's ρ),
  costs ``n_boot·m`` instead of ``n_boot·n`` and scipy has no option for it, hence the own loop.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from tokenscale import TokenscaleError
from tokenscale.analysis.instances import check_bootstrap, first_bad, flat_array, int_array, none_if_nan


MAX_N_MEAN = 10_000  # largest group bootstrapped at full size by group_means (see module docstring)
MAX_N_SPEARMAN = 20_000  # largest sample bootstrapped at full size by spearman_ci
_BATCH_ELEMENTS = 1 << 22  # resampled elements held at once


def _mean_stat(x, axis=-1):
    return np.mean(x, axis=axis)


def _wmean_stat(x, w, axis=-1):
    return np.sum(x * w, axis=axis) / np.sum(w, axis=axis)


def _spearman_stat(x, y, axis=-1):
    """Spearman ρ along ``axis`` (average ranks for ties, as scipy.stats.spearmanr), vectorised over rows."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx -= rx.mean(axis=axis, keepdims=True)
    ry -= ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(rx * ry, axis=axis) / np.sqrt(np.sum(rx * rx, axis=axis) * np.sum(ry * ry, axis=axis))


def _boot_ci(stat, data: tuple, est: float, *, n_boot: int, rng, confidence: float, max_n: int):
    """Percentile-bootstrap CI (low, high) of ``stat`` over paired samples ``data`` (see module docstring)."""
    n = data[0].shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples give NaN replicates / CI, reported as NaN
        if n <= max_n:
            r = stats.bootstrap(data, stat, n_resamples=n_boot, batch=max(1, _BATCH_ELEMENTS // n), vectorized=True,
                                paired=True, confidence_level=confidence, method="percentile", rng=rng)
            return float(r.confidence_interval.low), float(r.confidence_interval.high)
        # own m-out-of-n loop: resamples of size max_n, interval rescaled by sqrt(m/n) (module docstring)
        batch = max(1, _BATCH_ELEMENTS // max_n)
        reps = []
        for b in range(0, n_boot, batch):
            idx = rng.integers(0, n, size=(min(batch, n_boot - b), max_n))
            reps.append(stat(*(d[idx] for d in data), axis=-1))
        reps = np.concatenate(reps)
        if not np.all(np.isfinite(reps)):
            return math.nan, math.nan
        alpha = 1.0 - confidence
        q = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        lo, hi = est + math.sqrt(max_n / n) * (q - est)
        return float(lo), float(hi)


def group_means(tau, groups, *, weights=None, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                min_count: int = 20, keys=None, max_n: int = MAX_N_MEAN) -> dict:
    """Mean τ per group with a bootstrap CI: ``{group: {"n", "mean", "ci_low", "ci_high"}}`` (floats, NaN when
    undefined), for every group present in ``groups`` plus every code in ``keys`` (reported even when empty).

    ``weights`` (N,) > 0 gives weighted means ``Σwτ / Σw``, resampled with their τ.  Groups with fewer than
    ``min_count`` instances get a NaN CI.  Percentile bootstrap over instances; groups larger than ``max_n``
    use the rescaled m-out-of-n bootstrap (module docstring)."""
    x = flat_array("tau", tau).astype(np.float64)
    n = x.shape[0]
    g = int_array("groups", groups, n)
    check_bootstrap(n_boot, confidence)
    first_bad("tau", x, ~np.isfinite(x), "is not finite")
    w = None
    if weights is not None:
        w = flat_array("weights", weights, n).astype(np.float64)
        first_bad("weights", w, ~(np.isfinite(w) & (w > 0)), "is not a finite positive weight")
    rng = np.random.default_rng(seed)
    order = np.argsort(g, kind="stable")
    uniq, starts = np.unique(g[order], return_index=True)
    bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), np.append(starts[1:], n).tolist())))
    out = {}
    for key in sorted(set(bounds) | set(int(k) for k in (keys or ()))):
        a, b = bounds.get(key, (0, 0))
        sel = order[a:b]
        data = (x[sel],) if w is None else (x[sel], w[sel])
        stat = _mean_stat if w is None else _wmean_stat
        est = float(stat(*data)) if sel.size else math.nan
        lo = hi = math.nan
        if sel.size >= max(min_count, 2):
            lo, hi = _boot_ci(stat, data, est, n_boot=n_boot, rng=rng, confidence=confidence, max_n=max_n)
        out[key] = {"n": int(sel.size), "mean": est, "ci_low": lo, "ci_high": hi}
    return out


def spearman_ci(x, y, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                max_n: int = MAX_N_SPEARMAN) -> dict:
    """Spearman ρ of (x, y) with a percentile-bootstrap CI over pairs: ``{"rho", "ci_low", "ci_high", "n",
    "p_value"}``.  ρ and its p-value are scipy.stats.spearmanr on all n pairs; for n > ``max_n`` the bootstrap
    resamples ``max_n`` pairs per replicate and rescales the interval (module docstring).  ρ is NaN when x or y
    is constant."""
    x = flat_array("x", x).astype(np.float64)
    y = flat_array("y", y, x.shape[0]).astype(np.float64)
    check_bootstrap(n_boot, confidence)
    first_bad("x", x, ~np.isfinite(x), "is not finite")
    first_bad("y", y, ~np.isfinite(y), "is not finite")
    n = x.shape[0]
    if n < 3:
        raise TokenscaleError(f"spearman_ci needs at least 3 pairs, got {n}")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n, "p_value": math.nan}
    r = stats.spearmanr(x, y)
    rho, p = float(r.statistic), float(r.pvalue)
    lo, hi = _boot_ci(_spearman_stat, (x, y), rho, n_boot=n_boot, rng=np.random.default_rng(seed),
                      confidence=confidence, max_n=max_n)
    return {"rho": rho, "ci_low": max(lo, -1.0), "ci_high": min(hi, 1.0), "n": n, "p_value": p}


def spearman_json(x, y, **kw) -> dict:
    if x.shape[0] < 3:
        return {"rho": None, "ci_low": None, "ci_high": None, "n": int(x.shape[0]), "p_value": None}
    return {k: none_if_nan(v) for k, v in spearman_ci(x, y, **kw).items()}
