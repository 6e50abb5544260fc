"""Why the fitted α and the tail prediction α = β − 1 differ (issue #31 item 4): each effect measured on its own.

The prediction ``α = β − 1`` (package docstring, *Theory*) assumes (i) Δ independent of τ, (ii) the asymptotic tail:
the power law fitted on the post-transient points sees a pure ``τ^−β`` spectrum with pulses narrower than its
decay, and (iii) the post-transient points are past the transient. This module measures each assumption by fitting
the same power law ``L = k a^−α + E`` (:func:`.powerlaw.fit_power_law`) on the same post-transient axis points to
a chain of mean-loss curves, each adding one effect to the previous one:

* ``alpha_predicted`` = β − 1: the asymptotic tail of the main selection (as in the summary).
* ``alpha_truncated_tail`` (beside the chain): a pure ``p(τ) ∝ τ^−β`` from the first post-transient point (or
  τ_min if lower) to ``τ_max`` (the window end) with step-like pulses, ``L(a) − c ∝ ∫_a^{τ_max} τ^−β dτ``: the
  truncation at the window end alone (with E free it is absorbed, so this equals β − 1 up to the fit's accuracy).
* ``alpha_spectrum_steps`` (beside the chain): the selected tokens' empirical τ with step-like pulses and equal Δ,
  ``L(x) − c ∝ #{i ∈ sel: τ_i > x}``: the spectrum's shape on the window without the pulse width.
* ``alpha_window``: the reconstruction's implied mean loss, ``L_rec(x) = c − ∫_{x_0}^x (p∗g)(x') dx'`` (the
  analysis's p∗g on its fine grid, interpolated to the axis points): the empirical spectrum of the selected
  tokens in and around the window (its non-power-law parts, tokens learned just outside it) and the shared pulse
  width, with Δ independent of τ (g is shared).
* ``alpha_window_delta``: the selected tokens' own sigmoids, ``L(x) = c + (1/N_valid) Σ_sel Δ_i [1 − σ(λ_i(x −
  τ_i))]``: adds Δ(τ) (and per-token widths) to ``alpha_window``.
* ``alpha_sigmoid``: the sigmoid-implied mean loss of every valid token (``loss_sig``): adds the tokens outside
  the selection (noise rows, ascending rows).
* ``alpha_fit``: the empirical mean loss (as in the summary): adds the fits' residuals.

The constant ``c`` puts each curve's last axis point at the empirical mean loss there, so ``E ≥ 0`` never binds
differently from the empirical fit. The steps ``window = α_window − (β − 1)``, ``delta = α_window_delta −
α_window``, ``selection = α_sigmoid − α_window_delta``, ``misfit = α_fit − α_sigmoid`` add up to the gap
``α_fit − (β − 1)``; ``largest_step`` names the biggest in absolute value.

Analytic Δ(τ) correction: if the mean drop of a token learned at τ scales as ``Δ̄(τ) ∝ τ^γ``, the Δ-mass above a
is ``∫_a τ^−β τ^γ dτ ∝ a^{−(β−1−γ)}``, so ``α_corrected = β − 1 − γ`` (γ > 0: later tokens drop more, α
smaller). γ is the slope of ln(mean Δ per bin) on ln τ (8 equal-width ln τ bins over the tail range
``[τ_min, τ_max]``, weighted by √count): the mean, not the geometric mean, is what enters Σ Δ_i.

Transient: ``alpha_fit_by_start`` refits the empirical mean loss dropping the first j post-transient points (while
≥ 4 remain); a fit that drifts with the start says the early points bend it.

CI: a token bootstrap (selected tokens resampled with replacement, ``n_boot`` replicates, seed ``seed + 3``): each
replicate refits β on its fine histogram with τ_min re-selected (as the tail's own bootstrap, :mod:`.tail`), γ on
its tail range, and ``alpha_window_delta`` on its sigmoid sum; percentile 95 % intervals.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

from tokenscale.analysis.accumulate import FINE_BINS, prepare
from tokenscale.analysis.numerics import to_orig
from tokenscale.analysis.powerlaw import fit_power_law
from tokenscale.analysis.tail import fit_truncated_power_law

__all__ = ["alpha_gap", "gamma_of", "truncated_tail_curve", "sigmoid_sum", "GAMMA_BINS"]

GAMMA_BINS = 8
_STEPS = ("window", "delta", "selection", "misfit")


def gamma_of(tau_orig: np.ndarray, delta: np.ndarray, lo: float, hi: float, w: np.ndarray | None = None) -> float:
    """Slope γ of ln(mean Δ per ln τ bin) on ln τ over ``[lo, hi]`` (token multiplicities ``w``; NaN if < 3 bins)."""
    t = np.asarray(tau_orig, float)
    d = np.asarray(delta, float)
    w = np.ones_like(t) if w is None else np.asarray(w, float)
    keep = (w > 0) & (t >= lo) & (t <= hi) & np.isfinite(d) & (d > 0)
    if not (lo > 0 and hi > lo) or not keep.any():
        return math.nan
    edges = np.linspace(math.log(lo), math.log(hi), GAMMA_BINS + 1)
    b = np.clip(np.searchsorted(edges, np.log(t[keep]), side="right") - 1, 0, GAMMA_BINS - 1)
    n = np.bincount(b, weights=w[keep], minlength=GAMMA_BINS)
    s = np.bincount(b, weights=w[keep] * d[keep], minlength=GAMMA_BINS)
    ok = n > 0
    if ok.sum() < 3:
        return math.nan
    mid = 0.5 * (edges[1:] + edges[:-1])
    return float(np.polyfit(mid[ok], np.log(s[ok] / n[ok]), 1, w=np.sqrt(n[ok]))[0])


def truncated_tail_curve(a: np.ndarray, beta: float, lo: float, hi: float) -> np.ndarray:
    """``∫_{max(a, lo)}^{hi} τ^−β dτ`` (0 above ``hi``): the Δ-mass still to be learned under a pure truncated tail."""
    lo_a = np.clip(np.asarray(a, float), lo, hi)
    if abs(beta - 1.0) < 1e-12:
        return np.log(hi) - np.log(lo_a)
    return (lo_a ** (1.0 - beta) - hi ** (1.0 - beta)) / (beta - 1.0)


def sigmoid_sum(x: np.ndarray, tau: np.ndarray, lam: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """(n, K) per-token ``Δ_i [1 − σ(λ_i(x − τ_i))]`` on the axis points ``x`` (the part of Eq. 1 that moves)."""
    return delta[:, None] * expit(-lam[:, None] * (x[None, :] - tau[:, None]))


def _alpha(a, post, curve, anchor) -> float:
    """α of the power law on the post-transient points of ``curve`` shifted so its last point equals ``anchor``."""
    y = np.asarray(curve, float)
    return fit_power_law(a[post], (y - y[-1] + anchor)[post])["alpha"]


def _rec_loss(res) -> np.ndarray:
    """``−∫_{x_0}^x p∗g`` on the fine grid (trapezoids), at the axis points."""
    g, r = np.asarray(res.grid_x, float), np.asarray(res.deriv_rec_grid, float)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(g))])
    return np.interp(res.axis_x, g, -cum)


def _tail_beta(tau_x, tau_o, m, x0, x1, edges_o, opts) -> dict:
    """Truncated power-law tail of token multiplicities ``m`` on the analysis's fine histogram (n_boot = 0)."""
    fb = np.clip(np.floor((tau_x - x0) / (x1 - x0) * FINE_BINS).astype(np.int64), 0, FINE_BINS - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.nan_to_num(np.where(tau_o > 0, np.log(tau_o), np.nan))
    return fit_truncated_power_law(np.bincount(fb, weights=m, minlength=FINE_BINS),
                                   np.bincount(fb, weights=m * lt, minlength=FINE_BINS), edges_o,
                                   min_tail=opts.min_tail, min_tail_span=opts.min_tail_span, n_boot=0)


def _bootstrap(p, sel, S, a, post, anchor, res, opts) -> np.ndarray:
    """(R, 3) replicates of (β, γ, α_window_delta) over resampled selected tokens (module docstring)."""
    x0, x1 = float(res.axis_x[0]), float(res.axis_x[-1])
    edges_o = to_orig(np.linspace(x0, x1, FINE_BINS + 1), res.transform)
    tau_x, tau_o, dl = p["tau"][sel], p["tau_orig"][sel], p["delta"][sel]
    inw = (tau_x >= x0) & (tau_x <= x1)
    rng = np.random.default_rng(opts.seed + 3)
    n, out = tau_x.size, []
    for _ in range(opts.n_boot):
        m = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        t = _tail_beta(tau_x[inw], tau_o[inw], m[inw], x0, x1, edges_o, opts)
        g = gamma_of(tau_o, dl, t["xmin"], t["xmax"], m) if math.isfinite(t["beta"]) else math.nan
        out.append((t["beta"], g, _alpha(a, post, m @ S, anchor)))
    return np.array(out, float).reshape(-1, 3)


def _ci(v: np.ndarray) -> list[float]:
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size >= 2 else [math.nan] * 2


def alpha_gap(losses, fit, res, opts) -> dict:
    """The gap between ``res``'s α_fit and β − 1, measured effect by effect (module docstring); JSON-able dict."""
    inp = prepare(losses, fit, opts)
    p, a, post, x = inp.par, np.asarray(res.axis_orig, float), np.asarray(res.post_mask, bool), inp.x
    out = {"alpha_fit": res.powerlaw["alpha"], "alpha_predicted": res.tail["beta"] - 1.0,
           "n_post_transient_points": int(post.sum())}
    if post.sum() < 4 or not math.isfinite(res.tail["beta"]) or not math.isfinite(res.powerlaw["alpha"]):
        return out | {"note": "fewer than 4 post-transient points or no tail fit: no gap analysis"}
    beta, lo, hi = float(res.tail["beta"]), float(res.tail["xmin"]), float(res.tail["xmax"])
    anchor = float(res.loss_emp[-1])
    valid = inp.fitvalid & np.all(np.isfinite(np.asarray(losses, float)), axis=1)
    sel = valid & (inp.weight > 0)
    S = sigmoid_sum(x, p["tau"][sel], p["lam"][sel], p["delta"][sel]) / valid.sum()
    gamma = gamma_of(p["tau_orig"][sel], p["delta"][sel], lo, hi, inp.weight[sel])
    chain = {"alpha_predicted": beta - 1.0, "alpha_window": _alpha(a, post, _rec_loss(res), anchor),
             "alpha_window_delta": _alpha(a, post, S.sum(0), anchor),
             "alpha_sigmoid": _alpha(a, post, res.loss_sig, anchor), "alpha_fit": res.powerlaw["alpha"]}
    names = list(chain)
    steps = {s: chain[names[i + 1]] - chain[names[i]] for i, s in enumerate(_STEPS)}
    boots = _bootstrap(p, sel, S, a, post, anchor, res, opts) if opts.n_boot > 0 else np.zeros((0, 3))
    idx = np.nonzero(post)[0]
    by_start = [{"start": float(a[idx[j]]), "n_points": int(idx.size - j),
                 "alpha": fit_power_law(a[idx[j:]], res.loss_emp[idx[j:]])["alpha"]} for j in range(idx.size - 3)]
    out.update(chain, gamma=gamma, gamma_ci=_ci(boots[:, 1]), alpha_corrected=beta - 1.0 - gamma,
               alpha_corrected_ci=_ci(boots[:, 0] - 1.0 - boots[:, 1]), alpha_window_delta_ci=_ci(boots[:, 2]),
               alpha_spectrum_steps=_alpha(a, post, (p["tau"][sel][:, None] > x[None, :]).sum(0) / valid.sum(), anchor),
               alpha_truncated_tail=_alpha(a, post, truncated_tail_curve(a, beta, min(lo, a[post][0]), hi), anchor),
               steps=steps, gap=chain["alpha_fit"] - chain["alpha_predicted"],
               largest_step=max(steps, key=lambda s: abs(steps[s])), alpha_fit_by_start=by_start,
               n_boot_ok=int(np.sum(np.all(np.isfinite(boots), axis=1))), tail_range=[lo, hi],
               gamma_method=f"slope of ln(mean Δ) on ln τ, {GAMMA_BINS} ln τ bins over the tail range, main selection")
    return out
