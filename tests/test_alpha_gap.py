"""Known answers for :mod:`tokenscale.analysis.alpha_gap`: which effect separates α_fit from β − 1 (issue #31 item 4).

Planted token trajectories ``ℓ_i(x) = 2 + Δ_i [1 − σ(λ(x − τ_i))]`` on 25 log-spaced points over two decades
(a = 100 … 10⁴), τ drawn from ``p(τ) ∝ τ^−β`` (β = 1.8) on ``[10, τ_hi]``, ``Δ_i = (τ_i/100)^γ × lognormal(0, 0.3)``,
no fit step (the fit object carries the planted parameters), analysed by the real :func:`analyze` with every point
post-transient. Each case plants one effect:

* γ = 0.3, spectrum far past the window, sharp pulses: α_fit = β − 1 − γ, and ``alpha_corrected`` recovers it;
* γ = 0, the same: α_fit = β − 1 (no gap);
* γ = 0, spectrum ending at the window end, wide pulses (λ = 2 per decade): α_fit falls well below β − 1 and only
  the finite-window curve (p∗g over the window) recovers it;
* γ = 0 with 30 % of the tokens in an early cluster: α_fit on all points is far off and drifts back toward β − 1
  as the start moves past the cluster (``alpha_fit_by_start``).
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from tokenscale import analysis as an
from tokenscale.analysis.alpha_gap import _tail_beta, alpha_gap, gamma_of, sigmoid_sum, truncated_tail_curve
from tokenscale.analysis.accumulate import FINE_BINS
from tokenscale.analysis.powerlaw import fit_power_law

AXIS = np.geomspace(100.0, 1e4, 25)
BETA = 1.8


def _planted(gamma: float, lam: float, t_hi: float, early: float = 0.0, n: int = 6000, seed: int = 0):
    rng = np.random.default_rng(seed)
    e = 1.0 - BETA
    t = (10.0**e + rng.random(n) * (t_hi**e - 10.0**e)) ** (1.0 / e)
    if early:
        t[: int(n * early)] = 10.0 ** rng.normal(2.2, 0.1, int(n * early))
    x, tx = np.log10(AXIS), np.log10(t)
    d = (t / 100.0) ** gamma * rng.lognormal(0.0, 0.3, n)
    lam_v, post = np.full(n, float(lam)), np.full(n, 2.0)
    losses = post[:, None] + d[:, None] / (1.0 + np.exp(lam_v[:, None] * (x[None, :] - tx[:, None])))
    fit = types.SimpleNamespace(tau=tx, tau_orig=t, lam=lam_v, delta=d, post=post, status=np.zeros(n, int),
                                category=np.zeros(n, int), r2=np.ones(n), axis=x, axis_orig=AXIS, transform="log10")
    return losses, fit


def _gap(gamma, lam, t_hi, early=0.0, **kw):
    losses, fit = _planted(gamma, lam, t_hi, early)
    opts = an.AnalysisOptions(n_boot=20, transient="none", n_bins=20, **kw)
    res = an.analyze(losses, fit, opts)
    return alpha_gap(losses, fit, res, opts), res


def test_gamma_term_explains_the_gap_when_delta_grows_with_tau():
    g, _ = _gap(0.3, 12.0, 1e7)
    assert abs(g["alpha_fit"] - (BETA - 1 - 0.3)) < 0.05  # the planted relation α = β − 1 − γ
    assert g["alpha_predicted"] - g["alpha_fit"] > 0.2  # β − 1 misses it
    assert g["gamma"] == pytest.approx(0.3, abs=0.04) and g["gamma_ci"][0] < 0.3 + 0.04 < g["gamma_ci"][1] + 0.08
    assert abs(g["alpha_corrected"] - g["alpha_fit"]) < 0.05  # the correction recovers α_fit from β and γ
    assert g["alpha_corrected_ci"][0] < g["alpha_fit"] < g["alpha_corrected_ci"][1]
    assert abs(g["alpha_window"] - g["alpha_predicted"]) < 0.06  # the window adds nothing here
    assert g["largest_step"] == "delta" and g["n_boot_ok"] == 20
    assert sum(g["steps"].values()) == pytest.approx(g["gap"], abs=1e-12)


def test_no_gap_without_delta_trend_and_with_the_asymptotic_tail():
    g, _ = _gap(0.0, 12.0, 1e7)
    assert abs(g["alpha_fit"] - (BETA - 1)) < 0.05 and abs(g["alpha_fit"] - g["alpha_predicted"]) < 0.06
    assert abs(g["gamma"]) < 0.03 and abs(g["alpha_corrected"] - g["alpha_predicted"]) < 0.03
    assert g["alpha_truncated_tail"] == pytest.approx(g["alpha_predicted"], abs=1e-3)  # E absorbs the truncation


def test_finite_window_with_wide_pulses_is_recovered_only_by_the_window_curve():
    g, res = _gap(0.0, 2.0, 1e4)
    assert g["alpha_predicted"] - g["alpha_fit"] > 0.15  # the asymptotic prediction misses
    assert abs(g["alpha_corrected"] - g["alpha_predicted"]) < 0.03  # no γ to correct
    assert abs(g["alpha_window"] - g["alpha_fit"]) < 0.06  # p∗g over the same window carries the bend
    assert abs(g["alpha_spectrum_steps"] - g["alpha_predicted"]) < 0.06  # the spectrum itself is a power law:
    assert g["largest_step"] == "window"  # it is the pulse width against the window end
    assert res.tail["beta"] == pytest.approx(BETA, abs=0.1)


def test_transient_cluster_bends_early_fits_and_a_later_start_recovers_the_tail():
    g, _ = _gap(0.0, 12.0, 1e7, early=0.3)
    by = [b["alpha"] for b in g["alpha_fit_by_start"]]
    assert len(by) == AXIS.size - 3 and g["alpha_fit_by_start"][0]["start"] == pytest.approx(AXIS[0])
    assert abs(by[0] - (BETA - 1)) > 0.4  # the early cluster dominates a fit from the first point
    assert abs(float(np.median(by[-8:])) - (BETA - 1)) < 0.12  # a start past it sees the tail again


def test_too_few_post_transient_points_gives_a_note():
    losses, fit = _planted(0.0, 12.0, 1e7, n=2000)
    opts = an.AnalysisOptions(n_boot=0, transient=("start", float(AXIS[-3])), n_bins=20)
    res = an.analyze(losses, fit, opts)
    g = alpha_gap(losses, fit, res, opts)
    assert g["n_post_transient_points"] == 3 and "fewer than 4" in g["note"] and "gamma" not in g


def test_bootstrap_tail_reproduces_the_analysis_beta_at_unit_multiplicities():
    losses, fit = _planted(0.0, 12.0, 1e7, n=3000)
    opts = an.AnalysisOptions(n_boot=0, transient="none", n_bins=20)
    res = an.analyze(losses, fit, opts)
    x0, x1 = np.log10(AXIS[0]), np.log10(AXIS[-1])
    inw = (fit.tau >= x0) & (fit.tau <= x1)
    edges = 10.0 ** np.linspace(x0, x1, FINE_BINS + 1)
    t = _tail_beta(fit.tau[inw], fit.tau_orig[inw], np.ones(inw.sum()), x0, x1, edges, opts)
    assert t["beta"] == pytest.approx(res.tail["beta"], rel=1e-12) and t["xmin"] == res.tail["xmin"]


def test_gamma_of_known_slope_and_edge_cases():
    t = np.geomspace(10.0, 1e4, 400)
    assert gamma_of(t, 3.0 * t**0.5, 10.0, 1e4) == pytest.approx(0.5, abs=5e-3)  # bin means of a smooth trend
    assert gamma_of(t, 3.0 * t**-0.2, 10.0, 1e4, w=np.full(t.size, 2.0)) == pytest.approx(-0.2, abs=5e-3)
    assert math.isnan(gamma_of(t[:2], t[:2], 10.0, 1e4))  # fewer than 3 populated bins
    assert math.isnan(gamma_of(t, -t, 10.0, 1e4))  # no positive Δ
    assert math.isnan(gamma_of(t, t, 0.0, 1e4))  # no log range


def test_truncated_tail_curve_is_the_integral_and_fits_beta_minus_one():
    a = np.geomspace(50.0, 5e3, 30)
    c = truncated_tail_curve(a, 1.7, 50.0, 5e3)
    ref = [np.trapezoid(np.geomspace(v, 5e3, 20001) ** -1.7, np.geomspace(v, 5e3, 20001)) for v in a[[0, 10, 20]]]
    assert c[[0, 10, 20]] == pytest.approx(ref, rel=1e-6) and c[-1] == 0.0
    assert fit_power_law(a, c + 3.0)["alpha"] == pytest.approx(0.7, abs=1e-4)
    assert truncated_tail_curve(a, 1.0, 50.0, 5e3)[0] == pytest.approx(math.log(100.0))


def test_sigmoid_sum_batched_equals_per_token():
    rng = np.random.default_rng(1)
    x = np.linspace(0.0, 3.0, 11)
    tau, lam, d = rng.uniform(0, 3, 7), rng.uniform(1, 20, 7), rng.uniform(0.1, 4, 7)
    S = sigmoid_sum(x, tau, lam, d)
    for i in range(7):
        assert S[i] == pytest.approx(d[i] / (1.0 + np.exp(lam[i] * (x - tau[i]))), rel=1e-12)
