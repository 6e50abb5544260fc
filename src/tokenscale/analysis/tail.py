"""Truncated power-law tail of the learning-time distribution: β by maximum likelihood on [τ_min, window end],
τ_min by minimum KS distance (Clauset–Shalizi–Newman 2009), on a fine histogram of τ (definitions in
:mod:`tokenscale.analysis`)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fit_truncated_power_law"]


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
