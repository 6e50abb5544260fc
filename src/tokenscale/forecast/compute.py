"""Forecast of a series' mean-loss curve past its first k checkpoints from the token decomposition (issue #33).

Everything is on the fit's transformed axis x (``log10`` of the original unit, or the unit itself for ``linear``),
with the sigmoids ``s_i(x) = post_i + Δ_i σ(λ_i(τ_i − x))`` fitted on the prefix ``x_1..x_k`` only.

Token classes at the cut (progress ``g_i = σ(λ_i(x_k − τ_i))``, "descended" = valid fit, Δ ≥ ``MIN_DELTA``,
R² ≥ ``MIN_R2``):

* learned: descended and ``g_i ≥ LEARNED``: keep the fitted sigmoid;
* partial: descended and ``0.5 ≤ g_i < LEARNED`` (past half-way): refitted with the learned tokens' shape as a
  prior: λ fixed at ``λ_p`` (median λ of the learned tokens), τ by a grid profile, ``(post, Δ ≥ 0)`` by least
  squares with a ridge ``RIDGE·(Δ − Δ_prior,i)²``; ``Δ_prior,i = r(ℓ_i(x_1))·ℓ_i(x_1)`` with ``r(·)`` the learned
  tokens' mean ``Δ/(post + Δ)`` in their pre-descent-loss bin (the loss level stands in for frequency, which the
  trajectories do not carry);
* pool (every other token, including invalid fits): not learned yet; its members keep their loss at the cut.

Every learned or partial token is anchored at its observed loss at the cut: ``ℓ̂_i(x) = ℓ_i(x_k) + s_i(x) −
s_i(x_k)``. The pool learns at the spectrum's rate: ``h(τ)`` = fraction of all tokens per unit x with learning
time τ > x_k is ``h_0 (a(τ)/a_k)^e`` with ``e = 1 − β`` (log10: ``p(a) ∝ a^−β`` per original unit is
``∝ a^{1−β}`` per unit x) or ``e = −β`` (linear); ``h_0`` = fraction of all tokens whose prefix τ lies in the last
``RATE_SPAN`` of the prefix span, per unit x. The cumulative fraction is capped at the pool's fraction (tokens run
out). Their drops are the pool's mean ``r(ℓ_i(x_k))·ℓ_i(x_k)`` and their pulses have the shape ``λ_p``::

    L̂(x) = (1/N) [Σ_{learned, partial} ℓ̂_i(x) + Σ_pool ℓ_i(x_k)] − Δ̄_pool Σ_g w_g [σ(λ_p(x − τ_g)) − σ(λ_p(x_k − τ_g))]

on a τ grid ``τ_g`` past the cut with weights ``w_g = h(τ_g) dτ`` (capped). β is the truncated power-law tail
(:func:`tokenscale.analysis.fit_truncated_power_law`) of the descended tokens' prefix τ in ``[x_1, x_k]``.

Predictive interval: ``n_boot`` replicates, each with Poisson(1) token weights (every sum above reweighted: the
class sums, ``h_0``, ``Δ̄_pool``) and β drawn from a normal with the tail fit's bootstrap standard error; the
band is the 2.5–97.5 % percentiles. It covers token sampling and β, not the model's own error (a spectrum that
bends, drops that change with τ, post-learning drift of learned tokens).

Baselines on the same prefix: the power law ``L = k a^−α + E`` (:func:`tokenscale.analysis.fit_power_law` on the
prefix's mean losses), the naive extrapolation of every prefix sigmoid (the mean of ``s_i(x)``; invalid fits keep
their last loss) and the last value.
"""

from __future__ import annotations

import math

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.analysis import fit_power_law, fit_truncated_power_law
from tokenscale.io.fits import logistic

__all__ = ["baselines", "classify", "cut_points", "errors", "forecast_mean", "prefix_tail"]

MIN_DELTA, MIN_R2, LEARNED = 0.2, 0.2, 0.9
RIDGE = 1.0  # nats^-2 weight of the Δ prior against the squared residuals of a partial token
RATE_SPAN = 0.25  # last fraction of the prefix span whose learning rate starts the tail
N_DELTA_BINS, N_TAU_GRID, N_PROFILE = 8, 512, 96
TAIL_MIN, TAIL_SPAN = 50, 1.5  # the prefix tail fit: tokens in it and its smallest τ_max/τ_min


def cut_points(x: np.ndarray, frac: float | None, series: str = "series") -> int:
    """Number of axis points ``x_j ≤ x_0 + frac (x_{K−1} − x_0)`` (all for ``None``); fewer than 4 is one line."""
    k = x.size if frac is None else int(np.count_nonzero(x <= x[0] + float(frac) * (x[-1] - x[0]) + 1e-12))
    if k < 4:
        raise TokenscaleError(f"{series}: a cut at {frac} of the axis span leaves {k} points (a forecast needs >= 4)")
    return k


def classify(fit: dict, xk: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(learned, partial, pool) boolean masks of the prefix fits at the cut ``xk`` (module docstring)."""
    with np.errstate(invalid="ignore", over="ignore"):
        valid = (fit["status"] != 2) & np.isfinite(fit["tau"] + fit["lam"] + fit["delta"] + fit["post"])
        desc = valid & (fit["delta"] >= MIN_DELTA) & (fit["r2"] >= MIN_R2)
        g = np.where(desc, logistic(fit["lam"] * (xk - fit["tau"])), 0.0)
    learned = desc & (g >= LEARNED)
    partial = desc & (g >= 0.5) & ~learned
    return learned, partial, ~(learned | partial)


def _ratio_table(pre: np.ndarray, delta: np.ndarray, w: np.ndarray | None = None):
    """Bins of the learned tokens' pre-descent loss and their mean ``Δ/pre`` per bin (weights ``w``)."""
    edges = np.quantile(pre, np.linspace(0, 1, N_DELTA_BINS + 1))
    b = np.clip(np.searchsorted(edges, pre, side="right") - 1, 0, N_DELTA_BINS - 1)
    w = np.ones_like(pre) if w is None else w
    num = np.bincount(b, w * delta / pre, N_DELTA_BINS)
    den = np.bincount(b, w, N_DELTA_BINS)
    glob = num.sum() / max(den.sum(), 1e-300)
    return edges, np.where(den > 0, num / np.maximum(den, 1e-300), glob)


def _ratio_of(level: np.ndarray, table) -> np.ndarray:
    edges, r = table
    return r[np.clip(np.searchsorted(edges, level, side="right") - 1, 0, r.size - 1)]


def refit_partial(L: np.ndarray, x: np.ndarray, lam_p: float, d_prior: np.ndarray) -> dict:
    """Fixed-shape refit of partial tokens' prefix losses ``L`` (P, k): τ on a grid profile, (post, Δ ≥ 0) by ridge
    least squares towards ``d_prior`` (P,). Returns {tau, delta, post} (P,)."""
    span = x[-1] - x[0]
    taus = np.linspace(x[0] - 0.25 * span, x[-1] + 2.0 / lam_p, N_PROFILE)
    G = logistic(lam_p * (taus[:, None] - x[None, :]))  # (T, k) remaining fraction
    k = x.size
    sg, sgg = G.sum(1), (G * G).sum(1)  # (T,)
    sy, sgy = L.sum(1), L @ G.T  # (P,), (P, T)
    # normal equations of  Σ_j (post + Δ G_j − y_j)^2 + RIDGE (Δ − d)^2  in (post, Δ)
    a11, a12, a22 = k, sg[None, :], sgg[None, :] + RIDGE
    b1, b2 = sy[:, None], sgy + RIDGE * d_prior[:, None]
    det = a11 * a22 - a12 * a12
    delta = np.maximum((a11 * b2 - a12 * b1) / det, 0.0)
    post = (b1 - a12 * delta) / k
    r = post[:, :, None] + delta[:, :, None] * G[None] - L[:, None, :]
    obj = (r * r).sum(2) + RIDGE * (delta - d_prior[:, None]) ** 2
    j = np.argmin(obj, axis=1)
    i = np.arange(L.shape[0])
    return {"tau": taus[j], "delta": delta[i, j], "post": post[i, j]}


def prefix_tail(tau: np.ndarray, desc: np.ndarray, x: np.ndarray, transform: str, *, n_boot: int, seed: int) -> dict:
    """Truncated power-law tail of the descended tokens' τ inside the prefix ``[x_1, x_k]`` (β, its CI and se)."""
    t = tau[desc & (tau >= x[0]) & (tau <= x[-1])]
    edges = np.linspace(x[0], x[-1], 257)
    counts = np.histogram(t, edges)[0].astype(float)
    a_t = 10.0**t if transform == "log10" else t
    slog = np.histogram(t, edges, weights=np.log(np.maximum(a_t, 1e-300)))[0]
    e_orig = 10.0**edges if transform == "log10" else edges
    r = fit_truncated_power_law(counts, slog, e_orig, min_tail=TAIL_MIN, min_tail_span=TAIL_SPAN, n_boot=n_boot,
                                seed=seed)
    if not math.isfinite(r["beta"]):
        return r
    lo, hi = r["beta_ci"]
    r["beta_se"] = r.get("beta_se", (hi - lo) / 3.92 if math.isfinite(hi - lo) else 0.0)
    return r


def _parts(L: np.ndarray, x: np.ndarray, xt: np.ndarray, fit: dict, transform: str) -> dict:
    """The replicate-independent pieces: per-token curves of learned + partial tokens at ``xt``, the pool's losses
    and drops at the cut, the tokens that set the rate, the pulse matrix on the τ grid."""
    learned, partial, pool = classify(fit, x[-1])
    if np.count_nonzero(learned) < 20:
        raise TokenscaleError(f"only {np.count_nonzero(learned)} tokens are learned by the cut (x={x[-1]:.4g}); "
                              "a forecast needs >= 20 to set the pulse shape and drops")
    lam_p = float(np.median(fit["lam"][learned]))
    table = _ratio_table(fit["post"][learned] + fit["delta"][learned], fit["delta"][learned])
    now = L[:, -1].astype(float)
    tau, lam, delta, post = (np.array(fit[c], float) for c in ("tau", "lam", "delta", "post"))
    if partial.any():
        first = L[partial, 0].astype(float)
        rf = refit_partial(L[partial].astype(float), x, lam_p, _ratio_of(first, table) * first)
        tau[partial], delta[partial], post[partial], lam[partial] = rf["tau"], rf["delta"], rf["post"], lam_p
    lp = learned | partial
    xs = np.concatenate([[x[-1]], xt])
    s = post[lp, None] + delta[lp, None] * logistic(lam[lp, None] * (tau[lp, None] - xs[None, :]))
    curves = now[lp, None] + s[:, 1:] - s[:, :1]
    span = x[-1] - x[0]
    w_rate = max(RATE_SPAN * span, 1e-12)
    desc = lp | (pool & (fit["delta"] >= MIN_DELTA) & (fit["r2"] >= MIN_R2))
    rate_tok = (desc & (fit["tau"] > x[-1] - w_rate) & (fit["tau"] <= x[-1])).astype(float)
    tg = np.linspace(x[-1], xt.max() + 8.0 / lam_p, N_TAU_GRID + 1)
    tg, dtau = 0.5 * (tg[1:] + tg[:-1]), tg[1] - tg[0]
    pulse = logistic(lam_p * (xt[None, :] - tg[:, None])) - logistic(lam_p * (x[-1] - tg[:, None]))
    a_rel = 10.0 ** (tg - x[-1]) if transform == "log10" else tg / x[-1]
    return {"lp": lp, "pool": pool, "curves": curves, "now": now, "dbar": _ratio_of(now, table) * now,
            "rate_tok": rate_tok, "w_rate": w_rate, "pulse": pulse, "dtau": dtau, "a_rel": a_rel,
            "exp0": 1.0 if transform == "log10" else 0.0, "lam_p": lam_p,
            "counts": {"learned": int(learned.sum()), "partial": int(partial.sum()), "pool": int(pool.sum())}}


def _replicates(p: dict, W: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Predicted mean losses (B, M) for token weights ``W`` (B, N) and tail exponents ``betas`` (B,)."""
    n = W.sum(1)
    Wp = W[:, p["pool"]]
    npool = np.maximum(Wp.sum(1), 1e-300)
    known = (W[:, p["lp"]] @ p["curves"] + (Wp @ p["now"][p["pool"]])[:, None]) / n[:, None]
    h0 = (W @ p["rate_tok"]) / (n * p["w_rate"])
    dbar = (Wp @ p["dbar"][p["pool"]]) / npool
    with np.errstate(over="ignore"):
        h = h0[:, None] * p["a_rel"][None, :] ** (p["exp0"] - betas[:, None])
    cum = np.minimum(np.cumsum(h * p["dtau"], axis=1), (npool / n)[:, None])  # the pool runs out
    wg = np.diff(cum, axis=1, prepend=0.0)
    return known - dbar[:, None] * (wg @ p["pulse"])


def forecast_mean(L: np.ndarray, x: np.ndarray, xt: np.ndarray, fit: dict, transform: str, *, beta: float,
                  beta_se: float, n_boot: int, seed: int, ci: float = 0.95) -> dict:
    """The spectrum forecast of the mean loss at ``xt`` (M,) from prefix losses ``L`` (N, k) on ``x`` (k,) and the
    prefix fits ``fit`` (dict of (N,) arrays), with its bootstrap band (module docstring)."""
    p = _parts(L, x, xt, fit, transform)
    mean = _replicates(p, np.ones((1, L.shape[0])), np.array([beta]))[0]
    lo = hi = np.full_like(mean, np.nan)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = []
        for b0 in range(0, n_boot, 50):  # blocks of 50 replicates bound the (B, N) weights
            nb = min(50, n_boot - b0)
            W = rng.poisson(1.0, (nb, L.shape[0])).astype(float)
            betas = beta + (beta_se if math.isfinite(beta_se) else 0.0) * rng.standard_normal(nb)
            reps.append(_replicates(p, W, betas))
        q = (1 - ci) / 2 * 100
        lo, hi = np.percentile(np.concatenate(reps), [q, 100 - q], axis=0)
    return {"mean": mean, "lo": np.minimum(lo, mean), "hi": np.maximum(hi, mean), "lam_p": p["lam_p"],
            "counts": p["counts"]}


def baselines(L: np.ndarray, a: np.ndarray, x: np.ndarray, at: np.ndarray, xt: np.ndarray, fit: dict) -> dict:
    """Baselines on the prefix (N, k): power law on the prefix mean loss, naive sigmoid extrapolation, last value."""
    m = L.mean(0, dtype=np.float64)
    pl = fit_power_law(a, m)
    with np.errstate(invalid="ignore", over="ignore"):
        s = fit["post"][:, None] + fit["delta"][:, None] * logistic(fit["lam"][:, None] * (fit["tau"][:, None]
                                                                                          - xt[None, :]))
    ok = (fit["status"] != 2) & np.all(np.isfinite(s), axis=1)
    naive = (s[ok].sum(0) + L[~ok, -1].astype(float).sum()) / L.shape[0]
    power = pl["k"] * at ** (-pl["alpha"]) + pl["E"] if math.isfinite(pl["alpha"]) else np.full(at.shape, np.nan)
    return {"power_law": power, "naive_sigmoids": naive, "last_value": np.full(at.shape, m[-1]), "power_fit": pl}


def errors(pred: np.ndarray, truth: np.ndarray, lo=None, hi=None) -> dict:
    """Max and mean relative error of ``pred`` against ``truth`` and, with a band, its coverage."""
    rel = np.abs(np.asarray(pred) - truth) / np.abs(truth)
    out = {"max_rel_err": float(np.max(rel)), "mean_rel_err": float(np.mean(rel))}
    if lo is not None:
        out["coverage"] = float(np.mean((truth >= lo) & (truth <= hi)))
    return out
