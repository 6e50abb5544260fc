"""Known-answer tests for tokenscale.spectrum on planted token trajectories.

Planted model: learning times drawn from a Pareto law ``p(τ) ∝ τ^−β`` (original step units,
``τ ≥ τ_m``) on a log-spaced step axis 10..1e5 (x = log10 step), every token a sigmoid on x with
λ ≈ 10 per decade and Δ ≈ 2 nats (mild log-normal / normal scatter), plus Gaussian noise.
The fit object is built from the planted (true) parameters, so these tests check the decomposition
itself, not the sigmoid fitter.

Theory: ``L(a) − E ∝ a^{−(β−1)}``, so the fitted aggregate exponent must equal ``β − 1``.
Tolerances are set from the statistical error, not tuned to pass: with N = 20 000 tokens the
bootstrap SE of α is ≈ 0.007 and of β ≈ 0.01 (seen in the summary's CIs); the α tolerance 0.03
(≈ 4 SE) also absorbs the finite-pulse-width edge effect right after the transient.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale import analysis as sp
from tokenscale.analysis.curves import transient_start
from tokenscale.fit import SigmoidFit


def PlantedFit(*, transform: str = "log10", **cols) -> SigmoidFit:
    """A SigmoidFit built from planted parameters (what the fit engine returns, without fitting)."""
    return SigmoidFit(transform=transform, n_iter=np.zeros(len(cols["tau"]), dtype=np.int32), **cols)


def plant(n=20000, K=81, beta=1.5, tau_min=10**1.5, lam=10.0, lam_sd=0.15, delta=2.0,
          delta_sd=0.1, noise=0.05, seed=0, lam_fn=None):
    rng = np.random.default_rng(seed)
    a = np.geomspace(10.0, 1e5, K)
    x = np.log10(a)
    tau_o = tau_min * (1 - rng.random(n)) ** (-1.0 / (beta - 1.0))  # Pareto(β) on [τ_m, ∞)
    tau = np.log10(tau_o)
    la = lam * np.exp(lam_sd * rng.standard_normal(n)) if lam_fn is None else lam_fn(tau)
    de = delta * (1 + delta_sd * rng.standard_normal(n))
    post = 0.5 + 0.2 * rng.random(n)
    clean = post[:, None] + de[:, None] / (1 + np.exp(la[:, None] * (x[None, :] - tau[:, None])))
    losses = clean + noise * rng.standard_normal(clean.shape)
    mid = 0.5 * (x[0] + x[-1])
    cat = np.where(tau < x[0], 0, np.where(tau <= mid, 1, np.where(tau <= x[-1], 2, 3)))
    fit = PlantedFit(tau=tau, tau_orig=tau_o, lam=la, delta=de, post=post, pre=post + de,
                     sse=np.zeros(n), r2=np.ones(n), status=np.zeros(n, np.int8),
                     category=cat.astype(np.int8), axis=x, axis_orig=a)
    return losses, fit


@pytest.fixture(scope="module")
def planted():
    losses, fit = plant()
    res = sp.analyze(losses, fit, transient=0.25, n_boot=100, seed=1)
    return losses, fit, res


# ------------------------------------------------------------------ known answers


def test_tail_exponent_recovered_within_ci(planted):
    _, _, res = planted
    s = res.summary()
    lo, hi = s["tail"]["beta_ci"]
    assert lo <= 1.5 <= hi, s["tail"]
    assert hi - lo < 0.1  # the CI is informative, not vacuous
    assert abs(s["tail"]["beta"] - 1.5) < 0.03
    # the KS-selected x_min is not below the planted Pareto minimum (no spurious head included)
    assert s["tail"]["xmin"] >= 10**1.5 * 0.95


def test_alpha_matches_theory(planted):
    _, _, res = planted
    s = res.summary()
    assert abs(s["alpha_fit"] - 0.5) < 0.03, s["power_law"]
    assert abs(s["alpha_fit"] - s["alpha_predicted"]) < 0.04
    lo, hi = s["alpha_fit_ci"]
    assert lo < s["alpha_fit"] < hi and hi - lo < 0.1
    # E is the mean plateau of tokens that have learned: mean(post) = 0.6
    assert abs(s["power_law"]["E"] - 0.6) < 0.03


@pytest.mark.parametrize("beta", [1.3, 1.8])
def test_other_exponents(beta):
    losses, fit = plant(n=12000, beta=beta, tau_min=10**1.3, seed=3)
    res = sp.analyze(losses, fit, transient=0.25, n_boot=40, seed=0)
    s = res.summary()
    assert s["tail"]["beta_ci"][0] - 0.01 <= beta <= s["tail"]["beta_ci"][1] + 0.01, s["tail"]
    assert abs(s["alpha_fit"] - (beta - 1)) < 0.05, s["power_law"]


def test_reconstruction_and_svd(planted):
    _, _, res = planted
    m = res.metrics
    assert m["r2_reconstruction"] >= 0.95
    assert m["r2_sigmoid_deriv"] >= 0.95
    assert m["nerr_reconstruction"] < 0.1
    assert m["svd_energy1"] >= 0.9
    assert m["svd_energy1_fit"] >= 0.9
    assert res.svd["n_bins_used"] >= 10
    assert m["mean_loss_max_rel_err"] < 0.01
    # the template is the mean fitted pulse: its area is the mean Δ of in-window tokens (Eq. 2)
    assert m["template_area"] == pytest.approx(2.0, rel=0.02)
    assert m["template_resolved"]


def test_spectrum_density_normalisation(planted):
    _, fit, res = planted
    frac = np.sum(res.density_x * np.diff(res.bin_edges_x))
    assert frac == pytest.approx(res.counts["n_in_window"] / res.counts["n_valid"])
    # density per unit x: a Pareto(β) gives slope −(β−1) per decade in log10 density
    ce = 0.5 * (res.bin_edges_x[1:] + res.bin_edges_x[:-1])
    ok = (res.bin_count > 50) & (ce > 2)
    slope = np.polyfit(ce[ok], np.log10(res.density_x[ok]), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.05)


def test_svd_detects_shape_drift():
    """Negative control: λ drifting 10× across the window lowers the first-mode energy."""
    kw = dict(n=10000, beta=1.4, tau_min=10**1.2, seed=5)
    l0, f0 = plant(**kw)
    l1, f1 = plant(**kw, lam_fn=lambda t: 4 * 10 ** ((np.clip(t, 1, 5) - 1) / 4))
    e0 = sp.analyze(l0, f0, transient=0.25, n_boot=0).metrics["svd_energy1"]
    r1 = sp.analyze(l1, f1, transient=0.25, n_boot=0)
    assert e0 > 0.995
    assert r1.metrics["svd_energy1"] < e0 - 0.005
    # Figure-10 style drift also makes the shared-template reconstruction worse than the sigmoid one
    assert r1.metrics["nerr_reconstruction"] > r1.metrics["nerr_sigmoid_deriv"]


# ------------------------------------------------------------------ building blocks


def test_derivative_known_answer():
    x = np.linspace(0, 4, 161)
    y = 2.0 / (1 + np.exp(5 * (x - 2)))  # −dy/dx = 2·5/4 sech²(5(x−2)/2)
    true = 2 * 5 / 4 / np.cosh(5 * (x - 2) / 2) ** 2
    for sm in ("none", "savgol"):
        d = sp.derivative(y, x, sm)
        assert np.max(np.abs(d - true)) < 0.01 * true.max(), sm
    # non-uniform axis
    xn = np.sort(np.concatenate([x, [0.013, 1.337, 2.71]]))
    yn = 2.0 / (1 + np.exp(5 * (xn - 2)))
    d = sp.derivative(yn, xn, "savgol")
    tn = 2 * 5 / 4 / np.cosh(5 * (xn - 2) / 2) ** 2
    assert np.max(np.abs(d - tn)) < 0.02 * tn.max()
    with pytest.raises(TokenscaleError):
        sp.derivative(y, x, "spline")


def test_power_law_fit_exact():
    a = np.geomspace(100, 1e5, 50)
    y = 7.0 * a**-0.37 + 1.9
    r = sp.fit_power_law(a, y)
    assert r["alpha"] == pytest.approx(0.37, abs=1e-4)
    assert r["E"] == pytest.approx(1.9, abs=1e-4)
    assert r["k"] == pytest.approx(7.0, rel=1e-3)


def test_truncated_tail_fit_unbiased_where_pareto_is_not():
    rng = np.random.default_rng(7)
    beta, tmin, tmax = 1.4, 10.0, 1e4
    t = tmin * (1 - rng.random(400000)) ** (-1 / (beta - 1))
    t = t[t < tmax]  # observation window truncation (~6 % removed)
    edges = np.geomspace(tmin, tmax, 1025)
    j = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, 1023)
    c = np.bincount(j, minlength=1024).astype(float)
    s = np.bincount(j, weights=np.log(t), minlength=1024)
    r = sp.fit_truncated_power_law(c, s, edges, n_boot=30, seed=0)
    assert r["beta"] == pytest.approx(beta, abs=0.01)
    assert r["beta_ci"][0] <= beta <= r["beta_ci"][1]
    # the naive (untruncated) Pareto MLE on the same sample is clearly biased
    naive = 1 + t.size / np.sum(np.log(t / tmin))
    assert naive - beta > 0.03


# ------------------------------------------------------------------ consistency and edge cases


def test_invalid_rows_excluded_consistently():
    losses, fit = plant(n=3000, seed=11)
    ref = sp.analyze(losses, fit, transient=0.25, n_boot=0)
    bad = np.arange(0, 3000, 7)
    L2 = np.concatenate([losses, 1e3 + losses[bad]])
    extra = {k: np.concatenate([getattr(fit, k), getattr(fit, k)[bad]])
             for k in ("tau", "tau_orig", "lam", "delta", "post", "pre", "sse", "r2", "category")}
    st = np.concatenate([fit.status, np.full(bad.size, 2, np.int8)])
    extra["lam"][3000:3000 + bad.size // 2] = np.nan  # invalid_input rows have NaN parameters
    f2 = PlantedFit(**extra, status=st, axis=fit.axis, axis_orig=fit.axis_orig)
    L2[5, 3] = np.nan  # one valid fit with a non-finite loss → excluded and counted
    f2.status[5] = 0
    res = sp.analyze(L2, f2, transient=0.25, n_boot=0, chunk_elems=4096)  # many chunks
    assert res.counts["n_invalid_fit"] == bad.size
    assert res.counts["n_nonfinite_loss"] == 1
    assert res.counts["n_valid"] == 3000 - 1
    keep = np.ones(3000, bool)
    keep[5] = False
    ref2 = sp.analyze(losses[keep], PlantedFit(
        **{k: getattr(fit, k)[keep] for k in ("tau", "tau_orig", "lam", "delta", "post", "pre",
                                               "sse", "r2", "status", "category")},
        axis=fit.axis, axis_orig=fit.axis_orig), transient=0.25, n_boot=0)
    np.testing.assert_allclose(res.loss_emp, ref2.loss_emp, rtol=1e-12)
    np.testing.assert_allclose(res.loss_sig, ref2.loss_sig, rtol=1e-12)
    np.testing.assert_allclose(res.deriv_rec_grid, ref2.deriv_rec_grid, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(res.bin_count, ref2.bin_count)
    assert abs(ref.loss_emp[0] - res.loss_emp[0]) < 0.01


def test_all_invalid_raises():
    losses, fit = plant(n=50)
    fit.status[:] = 2
    with pytest.raises(TokenscaleError, match="no valid"):
        sp.analyze(losses, fit, n_boot=0)
    losses2, fit2 = plant(n=50)
    losses2[:, 0] = np.nan
    with pytest.raises(TokenscaleError, match="no valid"):
        sp.analyze(losses2, fit2, n_boot=0)


def test_bad_inputs_raise():
    losses, fit = plant(n=50)
    with pytest.raises(TokenscaleError):
        sp.analyze(losses[:, :-1], fit, n_boot=0)
    with pytest.raises(TokenscaleError):
        sp.analyze(losses[:-1], fit, n_boot=0)
    with pytest.raises(TokenscaleError):
        sp.analyze(losses, fit, transient=1.5, n_boot=0)
    with pytest.raises(TokenscaleError):
        sp.analyze(losses, fit, transient="later", n_boot=0)
    with pytest.raises(TokenscaleError):
        sp.analyze(losses[:, 0], fit, n_boot=0)


def test_tiny_n_runs_and_summary_is_json(tmp_path):
    losses, fit = plant(n=6, seed=2)
    res = sp.analyze(losses, fit, n_boot=5, transient="peak")
    s = res.summary()
    json.dumps(s, allow_nan=False)
    assert s["tokens"]["n_valid"] == 6
    assert s["tail"]["beta"] is None and s["tail"]["note"]
    p = tmp_path / "sub" / "summary.json"
    sp.write_summary(res, p, {"run": "tiny", "axis": "T"})
    d = json.loads(p.read_text())
    assert d["run"] == "tiny" and d["tokens"]["n_tokens"] == 6
    assert [q.name for q in p.parent.iterdir()] == ["summary.json"]  # no temp file left
    with pytest.raises(TokenscaleError, match="collides"):
        sp.write_summary(res, p, {"tokens": 1})


def test_transient_rules():
    losses, fit = plant(n=500, seed=4)
    r1 = sp.analyze(losses, fit, transient=("start", 1000), n_boot=0)
    assert r1.axis_orig[r1.post_mask].min() >= 1000 * (1 - 1e-9)
    r2 = sp.analyze(losses, fit, transient="none", n_boot=0)
    assert r2.post_mask.all()
    r3 = sp.analyze(losses, fit, transient=0.5, n_boot=0)
    assert r3.axis_x[r3.post_mask].min() >= 3.0 - 1e-9
    # dpeak: the post-transient points start where the empirical mean loss falls fastest
    r4 = sp.analyze(losses, fit, transient="dpeak", n_boot=0)
    mean = np.nanmean(losses, axis=0)
    steepest = r4.axis_x[int(np.argmax(-np.gradient(mean, r4.axis_x)))]
    assert r4.summary()["settings"]["transient"] == "dpeak"
    assert r4.axis_x[r4.post_mask].min() == pytest.approx(steepest)


def test_too_few_post_transient_points_give_null_numbers_and_a_note_not_an_error(tmp_path):
    """A loss that still speeds up at the end (dpeak keeps < 3 points): the analysis completes, the power law and
    the post-transient metrics are null, the note says why, and it survives the analysis file; the spectrum and
    pulses are computed as usual."""
    from tokenscale.analysis import read_analysis, write_analysis

    losses, fit = plant(n=600, seed=3)
    rising = np.array(losses, dtype=np.float64)
    rising[:, -2:] -= np.array([2.0, 6.0])  # the steepest fall of the mean is at the last point
    res = sp.analyze(rising, fit, transient="dpeak", n_boot=0)
    s = res.summary()
    assert s["n_post_transient_points"] < 3
    assert len(s["notes"]) == 1 and re.search(r"transient rule dpeak leaves [012] axis points; need >= 3", s["notes"][0])
    assert s["power_law"]["alpha"] is None and s["metrics"]["r2_reconstruction"] is None
    assert s["metrics"]["mean_loss_max_rel_err"] is None and s["tail"]["n_tail"] > 0
    write_analysis(res, tmp_path / "a.h5")
    assert read_analysis(tmp_path / "a.h5").notes == s["notes"]
    assert "notes" not in sp.analyze(losses, fit, transient="none", n_boot=0).summary()
    from tokenscale.analysis.figures import make_figures

    assert make_figures(read_analysis(tmp_path / "a.h5"), tmp_path / "fig")  # the figures draw the null power law


def test_dpeak_skips_an_initial_plateau():
    x = np.linspace(0.0, 3.0, 31)
    loss = 8.0 - 4.0 / (1.0 + np.exp(-6.0 * (x - 1.2)))  # flat at 8 nats, steepest descent at x = 1.2
    xs, name = transient_start("dpeak", x, loss, "log10")
    assert name == "dpeak" and xs == pytest.approx(1.2)
    with pytest.raises(TokenscaleError, match="transient must be"):
        transient_start("steepest", x, loss, "log10")


def test_linear_axis_and_categories():
    losses, fit = plant(n=2000, seed=6)
    lin = PlantedFit(**{k: getattr(fit, k) for k in ("tau_orig", "delta", "post", "pre", "sse",
                                                      "r2", "status", "category")},
                     tau=fit.tau, lam=fit.lam, axis=fit.axis, axis_orig=fit.axis, transform="linear")
    res = sp.analyze(losses, lin, n_boot=0)
    assert res.metrics["r2_sigmoid_deriv"] > 0.95
    cc = res.summary()["category_counts"]
    assert sum(v["all"] for v in cc.values()) == 2000
    assert cc["unlearned"]["all"] == int(np.sum(fit.category == 3))


def test_alpha_is_not_beta_minus_one_when_delta_depends_on_tau():
    """α = β − 1 needs Δ independent of τ. With Δ_i ∝ τ_i^γ the tail of Σ Δ_i is ∫_a^∞ τ^(γ−β) dτ ∝ a^−(β−1−γ):
    the fitted α follows β − 1 − γ, and the summary's alpha_predicted (β − 1) is off by γ."""
    rng = np.random.default_rng(8)
    n, beta, gamma, tau_m = 16000, 1.8, 0.3, 10**1.5
    a = np.geomspace(10.0, 1e5, 81)
    x = np.log10(a)
    tau_o = tau_m * (1 - rng.random(n)) ** (-1.0 / (beta - 1.0))
    tau = np.log10(tau_o)
    lam = 10.0 * np.exp(0.15 * rng.standard_normal(n))
    de = 0.5 * (tau_o / tau_m) ** gamma  # Δ grows with τ
    post = 0.5 + 0.2 * rng.random(n)
    losses = post[:, None] + de[:, None] / (1 + np.exp(lam[:, None] * (x[None, :] - tau[:, None])))
    losses += 0.02 * rng.standard_normal(losses.shape)
    fit = PlantedFit(tau=tau, tau_orig=tau_o, lam=lam, delta=de, post=post, pre=post + de, sse=np.zeros(n),
                     r2=np.ones(n), status=np.zeros(n, np.int8), category=np.zeros(n, np.int8), axis=x, axis_orig=a)
    s = sp.analyze(losses, fit, transient=0.25, n_boot=0, selection="all").summary()
    assert abs(s["tail"]["beta"] - beta) < 0.05, s["tail"]  # the spectrum itself is still recovered
    assert abs(s["alpha_fit"] - (beta - 1 - gamma)) < 0.06, s["power_law"]
    assert s["alpha_predicted"] - s["alpha_fit"] > 0.2  # the α = β − 1 prediction fails by about γ
