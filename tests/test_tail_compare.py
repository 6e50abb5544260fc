"""Known-answer tests for tokenscale.analysis.tail_compare (CSN tail comparison on a finite window).

References are independent of the module: ``scipy.integrate.quad`` for every normaliser,
``scipy.optimize.minimize_scalar`` on a quad-normalised likelihood for the power-law MLE, exact
inverse-CDF / rejection samplers written here. Tolerances are in standard errors (observed
information at the estimate), not tuned to pass; seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special

from tokenscale import TokenscaleError
from tokenscale.analysis import tail_compare as tc

from tokenscale.analysis.tail import fit_truncated_power_law

A, B = 10.0, 1000.0
N = 20000


# ----------------------------------------------------------------------------------------------
# samplers (exact) and references


def sample_powerlaw(rng, beta, a, b, n):
    s = 1.0 - beta
    u = rng.random(n)
    if s == 0:
        return a * np.exp(u * math.log(b / a))
    return np.clip((a**s + u * (b**s - a**s)) ** (1.0 / s), a, b)


def sample_lognormal(rng, mu, sigma, a, b, n):
    lo, hi = special.ndtr((math.log(a) - mu) / sigma), special.ndtr((math.log(b) - mu) / sigma)
    z = special.ndtri(lo + rng.random(n) * (hi - lo))
    return np.clip(np.exp(mu + sigma * z), a, b)


def sample_cutoff(rng, beta, gamma, a, b, n):
    """Rejection: proposal = truncated power law (same β), accept with prob e^{−γ(x−a)}."""
    out = []
    while sum(map(len, out)) < n:
        x = sample_powerlaw(rng, beta, a, b, 2 * n)
        out.append(x[rng.random(x.size) < np.exp(-gamma * (x - a))])
    return np.concatenate(out)[:n]


def _geo_pieces(a, b, extra=()):
    p = set(np.geomspace(a, b, 41).tolist()) | {v for v in extra if a < v < b}
    return sorted(p)


def ref_log_norm_cutoff(beta, gamma, a, b):
    """ln ∫_a^b x^−β e^{−γx} dx by quad in x on geometric pieces, shifted by the maximum."""
    g = lambda x: -beta * math.log(x) - gamma * x  # noqa: E731
    mode = -beta / gamma if gamma > 0 and beta < 0 else a
    gm = max(g(a), g(b), g(min(max(mode, a), b)))
    tot = 0.0
    pieces = _geo_pieces(a, b, [mode])
    for lo, hi in zip(pieces[:-1], pieces[1:]):
        tot += integrate.quad(lambda x: math.exp(g(x) - gm), lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0]
    return gm + math.log(tot)


def ref_log_norm_lognormal(mu, sigma, a, b):
    """ln ∫_a^b (1/(xσ)) φ((ln x − μ)/σ) dx by quad in y = ln x, shifted by the maximum."""
    ya, yb = math.log(a), math.log(b)
    ym = min(max(mu, ya), yb)
    zm = (ym - mu) / sigma
    f = lambda y: math.exp(-0.5 * (((y - mu) / sigma) ** 2 - zm * zm))  # noqa: E731
    pts = np.unique(np.concatenate([np.linspace(ya, yb, 41), [ym]]))
    tot = sum(integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0] for lo, hi in zip(pts[:-1], pts[1:]))
    return -0.5 * zm * zm - 0.5 * math.log(2 * math.pi) - math.log(sigma) + math.log(tot)


def observed_se(loglik, theta, rel=1e-4):
    """Standard errors from the numerical Hessian of the total log-likelihood at theta."""
    theta = np.asarray(theta, float)
    k = theta.size
    h = rel * np.maximum(np.abs(theta), 1e-3)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            ei, ej = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
            H[i, j] = (loglik(theta + ei + ej) - loglik(theta + ei - ej) - loglik(theta - ei + ej)
                       + loglik(theta - ei - ej)) / (4 * h[i] * h[j])
    return np.sqrt(np.diag(np.linalg.inv(-H)))


# ----------------------------------------------------------------------------------------------
# normalisers against quad (1e-8 relative on Z, i.e. 1e-8 absolute on ln Z)


@pytest.mark.parametrize("beta", [-3.0, 0.0, 0.5, 1.0 - 1e-9, 1.0, 1.0 + 1e-9, 1.8, 4.0, 40.0])
def test_powerlaw_normaliser_matches_quad(beta):
    for a, b in [(A, B), (0.5, 3.0), (1.0, 1e6)]:
        assert tc.log_norm_trunc_powerlaw(beta, a, b) == pytest.approx(ref_log_norm_cutoff(beta, 0.0, a, b),
                                                                        abs=1e-8)
    assert tc.log_norm_trunc_powerlaw(1.0, A, B) == math.log(math.log(B / A))  # β = 1: Z = ln(b/a)


def test_cutoff_normaliser_matches_quad_on_every_branch():
    methods = set()
    for a, b in [(A, B), (0.5, 3.0), (1.0, 1e6)]:
        for beta in [-3.0, -0.5, 0.0, 0.5, 1.0 - 1e-6, 1.0, 1.0 + 1e-6, 1.3, 1.8, 2.5, 5.0]:
            for gb in [1e-9, 1e-3, 0.3, 3.0, 30.0, 300.0]:  # γ·b: from no cutoff to a sharp one
                gamma = gb / b
                got, how = tc._log_norm_cutoff_detail(beta, gamma, a, b)
                methods.add(how)
                ref = ref_log_norm_cutoff(beta, gamma, a, b)
                assert got == pytest.approx(ref, abs=1e-8), (beta, gamma, a, b, how)
                assert tc.log_norm_trunc_cutoff(beta, gamma, a, b) == got
    assert methods == {"gammainc", "exp1", "recurrence", "quad"}
    assert tc.log_norm_trunc_cutoff(1.8, 0.0, A, B) == tc.log_norm_trunc_powerlaw(1.8, A, B)
    with pytest.raises(TokenscaleError, match="gamma must be"):
        tc.log_norm_trunc_cutoff(1.8, -1e-3, A, B)


@pytest.mark.parametrize("mu,sigma,a,b", [
    (math.log(50), 1.0, A, B),           # body of the distribution
    (0.0, 1.0, math.exp(30), math.exp(40)),  # far upper tail: Φ(B) − Φ(A) ~ 1e-198
    (100.0, 1.0, 1.0, math.exp(2)),      # far lower tail
    (math.log(5), 100.0, 4.0, 6.0),      # nearly flat: Φ values cancel
    (-20.0, 3.0, A, B),                  # power-law-like window
])
def test_lognormal_normaliser_matches_quad(mu, sigma, a, b):
    assert tc.log_norm_trunc_lognormal(mu, sigma, a, b) == pytest.approx(ref_log_norm_lognormal(mu, sigma, a, b),
                                                                           abs=1e-8)


def test_lognormal_unit_window_normaliser_matches_quad():
    """ln ∫_{−1}^{1} exp(t1 u + t2 u²) du (the fit's parametrisation) across all branches."""
    for t1 in [0.0, 0.5, -5.0, 19.9, 20.1, 50.0, -300.0]:
        for t2 in [0.0, -1e-9, -1e-3, -1.0, -10.0, -25.0, -300.0, -1e5]:
            u0 = min(max(t1 / (-2 * t2), -1.0), 1.0) if t2 < 0 else math.copysign(1.0, t1)
            em = t1 * u0 + t2 * u0 * u0
            pts = sorted({-1.0, 1.0, u0})
            ref = em + math.log(sum(integrate.quad(lambda u: math.exp(t1 * u + t2 * u * u - em), lo, hi,
                                                   epsabs=0, epsrel=1e-13, limit=200)[0]
                                    for lo, hi in zip(pts[:-1], pts[1:]) if hi > lo))
            assert tc._log_z_quad_exp(t1, t2) == pytest.approx(ref, abs=1e-8), (t1, t2)


# ----------------------------------------------------------------------------------------------
# known-answer recovery


def test_powerlaw_recovery_and_quad_reference():
    x = sample_powerlaw(np.random.default_rng(0), 1.8, A, B, N)
    r = tc.fit_trunc_powerlaw(x, A, B)
    assert r["converged"] and r["n"] == N
    se = observed_se(lambda t: np.sum(tc.logpdf_trunc_powerlaw(x, t[0], A, B)), [r["beta"]])[0]
    assert abs(r["beta"] - 1.8) < 3 * se
    assert r["loglik"] == pytest.approx(np.sum(tc.logpdf_trunc_powerlaw(x, r["beta"], A, B)), rel=1e-12)
    # independent reference: bounded scalar maximisation of the quad-normalised log-likelihood
    s_ln = np.sum(np.log(x))
    ref = optimize.minimize_scalar(lambda b_: b_ * s_ln / N + ref_log_norm_cutoff(b_, 0.0, A, B),
                                   bounds=(1.0, 3.0), method="bounded", options={"xatol": 1e-10})
    assert r["beta"] == pytest.approx(ref.x, abs=1e-6)
    # β = 1 (log-uniform) is handled analytically
    r1 = tc.fit_trunc_powerlaw(sample_powerlaw(np.random.default_rng(1), 1.0, A, B, N), A, B)
    assert r1["converged"] and abs(r1["beta"] - 1.0) < 0.03


def test_lognormal_recovery():
    mu, sigma = math.log(50), 1.0
    x = sample_lognormal(np.random.default_rng(2), mu, sigma, A, B, N)
    r = tc.fit_trunc_lognormal(x, A, B)
    assert r["converged"] and not r["powerlaw_limit"]
    ll = lambda t: np.sum(tc.logpdf_trunc_lognormal(x, t[0], t[1], A, B))  # noqa: E731
    se = observed_se(ll, [r["mu"], r["sigma"]])
    assert abs(r["mu"] - mu) < 3 * se[0] and abs(r["sigma"] - sigma) < 3 * se[1]
    # the fit's natural-parameter likelihood equals the (μ, σ) one with the log_ndtr normaliser
    assert r["loglik"] == pytest.approx(ll([r["mu"], r["sigma"]]), rel=1e-10)
    # a maximum: perturbing either parameter by 0.1 SE lowers the likelihood
    for d in ([0.1 * se[0], 0], [-0.1 * se[0], 0], [0, 0.1 * se[1]], [0, -0.1 * se[1]]):
        assert ll([r["mu"] + d[0], r["sigma"] + d[1]]) < r["loglik"]


@pytest.mark.parametrize("beta,gamma,seed", [(1.5, 0.005, 3), (-1.0, 0.02, 4)])
def test_cutoff_recovery(beta, gamma, seed):
    rng = np.random.default_rng(seed)
    if beta < 0:  # x^{1}e^{−γx} = Gamma(shape 2, rate γ) restricted to the window
        x = rng.gamma(1.0 - beta, 1.0 / gamma, 3 * N)
        x = x[(x >= A) & (x <= B)][:N]
    else:
        x = sample_cutoff(rng, beta, gamma, A, B, N)
    r = tc.fit_trunc_cutoff(x, A, B)
    assert r["converged"] and r["gamma"] > 0
    ll = lambda t: np.sum(tc.logpdf_trunc_cutoff(x, t[0], t[1], A, B))  # noqa: E731
    se = observed_se(ll, [r["beta"], r["gamma"]])
    assert abs(r["beta"] - beta) < 3 * se[0] and abs(r["gamma"] - gamma) < 3 * se[1]
    assert r["loglik"] == pytest.approx(ll([r["beta"], r["gamma"]]), rel=1e-12)
    assert r["loglik"] >= tc.fit_trunc_powerlaw(x, A, B)["loglik"]


def test_integer_weights_equal_repeated_samples():
    rng = np.random.default_rng(5)
    x = sample_lognormal(rng, math.log(50), 1.0, A, B, 3000)
    w = rng.integers(0, 4, x.size)
    xr = np.repeat(x, w)
    for fit, keys in [(tc.fit_trunc_powerlaw, ["beta"]), (tc.fit_trunc_lognormal, ["mu", "sigma"]),
                      (tc.fit_trunc_cutoff, ["beta", "gamma"])]:
        rw, rr = fit(x, A, B, weights=w), fit(xr, A, B)
        assert rw["converged"] and rr["converged"]
        for k in keys:
            assert rw[k] == pytest.approx(rr[k], rel=1e-5), (fit.__name__, k)
        assert rw["loglik"] == pytest.approx(rr["loglik"], rel=1e-9)
    cw, cr = tc.compare_tail(x, A, B, weights=w), tc.compare_tail(xr, A, B)
    assert cw["n"] == xr.size
    for alt in ("lognormal", "cutoff"):
        for k in ("R", "normalized_R"):
            assert cw[alt][k] == pytest.approx(cr[alt][k], rel=1e-5, abs=1e-6)
        assert cw[alt]["verdict"] == cr[alt]["verdict"]


# ----------------------------------------------------------------------------------------------
# the comparison


def test_compare_powerlaw_data_not_beaten():
    x = sample_powerlaw(np.random.default_rng(6), 1.8, A, B, N)
    r = tc.compare_tail(x, A, B)
    assert abs(r["powerlaw"]["beta"] - 1.8) < 0.03
    for alt in ("lognormal", "cutoff"):
        assert r[alt]["converged"]
        assert r[alt]["verdict"] != f"{alt} favoured"
        assert r[alt]["p"] >= tc.SIGNIFICANCE or r[alt]["R"] > 0
    c = r["cutoff"]
    assert c["test"] == "lr_nested_chi2_1_halved" and c["R"] <= 0
    if c["R"] < 0:  # p is half the χ²(1) tail of LR = −2R (boundary γ = 0)
        assert c["p"] == pytest.approx(0.5 * special.chdtrc(1, -2 * c["R"]), rel=1e-10)
        assert c["p_unhalved"] == pytest.approx(2 * c["p"])
    assert r["lognormal"]["test"] == "vuong_two_sided"
    # both alternatives contain the power law (γ = 0; σ → ∞), so neither fits worse than it
    pl_ll = r["powerlaw"]["loglik"]
    assert c["loglik"] >= pl_ll and r["lognormal"]["loglik"] >= pl_ll - 1e-6 * abs(pl_ll)
    if r["lognormal"]["powerlaw_limit"]:  # MLE at σ = ∞: R = 0 exactly, nothing to test
        assert r["lognormal"]["sigma"] == math.inf and r["lognormal"]["R"] == 0 and r["lognormal"]["p"] == 1


def test_compare_lognormal_data_favours_lognormal():
    x = sample_lognormal(np.random.default_rng(7), math.log(50), 1.0, A, B, N)
    r = tc.compare_tail(x, A, B)
    ln = r["lognormal"]
    assert ln["verdict"] == "lognormal favoured" and ln["R"] < 0 and ln["p"] < 1e-6
    assert ln["normalized_R"] < -5
    # Vuong: p is the two-sided normal tail of the normalised ratio
    assert ln["p"] == pytest.approx(special.erfc(abs(ln["normalized_R"]) / math.sqrt(2)), rel=1e-10)
    assert r["cutoff"]["verdict"] == "cutoff favoured"


def test_compare_cutoff_data_favours_cutoff():
    x = sample_cutoff(np.random.default_rng(8), 1.5, 0.005, A, B, N)
    r = tc.compare_tail(x, A, B)
    assert r["cutoff"]["verdict"] == "cutoff favoured" and r["cutoff"]["p"] < 1e-6
    c = r["cutoff"]
    assert c["R"] == pytest.approx(r["powerlaw"]["loglik"] - c["loglik"])
    # nested LR with γ = 0 on the boundary: p = ½ P(χ²₁ > −2R)
    assert c["p"] == pytest.approx(0.5 * special.chdtrc(1, -2 * c["R"]), rel=1e-10, abs=1e-300)
    assert c["p_unhalved"] == pytest.approx(special.chdtrc(1, -2 * c["R"]), rel=1e-10, abs=1e-300)


def test_verdict_strings():
    assert tc._verdict(0.05, 3.0, "lognormal") == "power law favoured"
    assert tc._verdict(0.05, -3.0, "lognormal") == "lognormal favoured"
    assert tc._verdict(0.25, -3.0, "cutoff") == "inconclusive (p=0.25)"
    assert tc._verdict(math.nan, math.nan, "cutoff").startswith("inconclusive")


# ----------------------------------------------------------------------------------------------
# pin the pipeline's truncated estimator; the untruncated Pareto MLE is not a reference


def test_pipeline_truncated_mle_equals_independent_fit():
    rng = np.random.default_rng(9)
    body = 1.0 * (1.0 + rng.random(5000) * (10.0**1.5 - 1.0)) ** (1 / 1.5)  # rising density on [1, 10]
    x = np.concatenate([body, sample_powerlaw(rng, 1.8, A, B, 15000)])
    edges = np.geomspace(1.0, B, 1025)
    counts, _ = np.histogram(x, edges)
    slog, _ = np.histogram(x, edges, weights=np.log(x))  # exact per-bin Σ ln τ
    pipe = fit_truncated_power_law(counts, slog, edges, n_boot=0)
    xmin, xmax = pipe["xmin"], pipe["xmax"]
    assert xmax == B and 5.0 < xmin < 30.0
    tail = x[x >= xmin]
    assert tail.size == pipe["n_tail"]
    ours = tc.fit_trunc_powerlaw(tail, xmin, xmax)
    assert ours["converged"]
    assert pipe["beta"] == pytest.approx(ours["beta"], rel=1e-7)  # ≥ 6 significant digits


def test_untruncated_pareto_mle_is_biased_on_a_window():
    """β̂ = 1 + n/Σ ln(x/a) ignores τ_max: on [10, 1000] with β = 1.8 it converges to ≈ 1.884, not 1.8."""
    beta = 1.8
    x = sample_powerlaw(np.random.default_rng(10), beta, A, B, N)
    untrunc = 1.0 + x.size / np.sum(np.log(x / A))
    ours = tc.fit_trunc_powerlaw(x, A, B)["beta"]
    se = (beta - 1.0) / math.sqrt(N)  # Pareto SE, a generous scale for both estimators
    # its limit: 1 + 1/E_β[ln(x/a)] under the truncated law (E by quad)
    z = math.exp(ref_log_norm_cutoff(beta, 0.0, A, B))
    e_ln = integrate.quad(lambda t: math.log(t / A) * t**-beta, A, B, epsrel=1e-12)[0] / z
    limit = 1.0 + 1.0 / e_ln
    assert limit - beta > 0.08
    assert abs(untrunc - limit) < 4 * se and untrunc - beta > 10 * se
    assert abs(ours - beta) < 4 * se


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kw,match", [
    ({"x": np.linspace(20, 30, 9)}, r"at least 10 samples.*n = 9"),
    ({"x": np.full(50, 20.0)}, r"all 50 samples equal 20\.0"),
    ({"a": 1000.0, "b": 10.0}, r"a < b.*a=1000\.0, b=10\.0"),
    ({"a": 10.0, "b": 10.0}, r"a < b"),
    ({"a": 0.0}, r"a \(tau_min\) must be a finite number > 0, got 0\.0"),
    ({"b": math.inf}, r"b \(tau_max\) must be a finite number > 0, got inf"),
    ({"x": np.r_[np.linspace(20, 30, 20), 1001.0]}, r"x\[20\] = 1001\.0 lies outside the window"),
    ({"x": np.r_[5.0, np.linspace(20, 30, 20)]}, r"x\[0\] = 5\.0 lies outside"),
    ({"x": np.r_[np.linspace(20, 30, 20), np.nan]}, r"x\[20\] = nan is not finite"),
    ({"weights": np.r_[np.ones(19), -1.0]}, r"weights\[19\] = -1\.0 is negative"),
    ({"weights": np.ones(3)}, r"weights has shape \(3,\)"),
    ({"weights": np.r_[np.ones(9), np.zeros(11)]}, r"at least 10 samples with positive weight.*n = 9"),
    ({"x": np.linspace(20, 30, 20).reshape(4, 5)}, r"x must be 1-D"),
])
@pytest.mark.parametrize("fn", [tc.compare_tail, tc.fit_trunc_powerlaw, tc.fit_trunc_lognormal, tc.fit_trunc_cutoff])
def test_bad_input_raises_one_line(fn, kw, match):
    args = {"x": np.linspace(20, 30, 20), "a": A, "b": B, "weights": None}
    args.update(kw)
    with pytest.raises(TokenscaleError, match=match) as e:
        fn(args["x"], args["a"], args["b"], weights=args["weights"])
    assert "\n" not in str(e.value)
