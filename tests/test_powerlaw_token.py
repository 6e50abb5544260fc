"""The batched per-token power-law fit (tokenscale.fit.powerlaw_token): scalar equivalence with
scipy.optimize.curve_fit, known-answer recovery, planted sigmoids, edge cases, dtype."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from tokenscale import TokenscaleError
from tokenscale.fit.planted import default_step_axis, planted_trajectories
from tokenscale.fit.powerlaw_token import fit_power_laws, power_law_curve

A = np.logspace(2, 5, 30)


def _planted_power_laws(n, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    k, alpha, E = rng.uniform(5, 50, n), rng.uniform(0.2, 1.2, n), rng.uniform(1, 4, n)
    y = power_law_curve(A, k, alpha, E) + noise * rng.standard_normal((n, A.size))
    return y, k, alpha, E


def test_recovers_planted_power_laws():
    y, k, alpha, E = _planted_power_laws(500, noise=0.0)
    r = fit_power_laws(y, A)
    assert np.all(r.status == 0)
    np.testing.assert_allclose(r.alpha, alpha, rtol=1e-5)
    np.testing.assert_allclose(r.k, k, rtol=1e-4)
    np.testing.assert_allclose(r.E, E, rtol=1e-5, atol=1e-6)
    assert np.all(r.rss < 1e-10)


def test_noisy_recovery_and_rss_is_the_residual_sum():
    y, k, alpha, E = _planted_power_laws(400, seed=1, noise=0.02)
    r = fit_power_laws(y, A)
    assert np.median(np.abs(r.alpha - alpha) / alpha) < 0.05
    np.testing.assert_allclose(r.rss, ((r.predict() - y) ** 2).sum(axis=1), rtol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_scalar_curve_fit(seed):
    """curve_fit per row from several starts (the best kept) never beats the batched fit's RSS."""
    y, *_ = _planted_power_laws(6, seed=seed, noise=0.1)
    sig, truth = planted_trajectories(6, A, seed=seed, dtype=np.float64)
    rows = np.vstack([y, sig])
    r = fit_power_laws(rows, A)
    f = lambda a, k, al, e: k * (a / 1e3) ** (-al) + e  # noqa: E731  (scaled axis: curve_fit's conditioning)
    for i, row in enumerate(rows):
        best = np.inf
        for al0 in (0.05, 0.3, 1.0, 3.0):
            try:
                p, _ = curve_fit(f, A, row, p0=[1.0, al0, row[-1]], bounds=([-np.inf, 0.01, -np.inf],
                                                                            [np.inf, 5.0, np.inf]), maxfev=20000)
            except RuntimeError:
                continue
            best = min(best, float(((f(A, *p) - row) ** 2).sum()))
        assert r.rss[i] <= best * (1 + 1e-6) + 1e-12, (i, r.rss[i], best)
        assert r.rss[i] >= best * (1 - 1e-3) - 1e-9, (i, r.rss[i], best)  # the same minimum, not a different model


def test_planted_sigmoids_fit_worse_than_their_noise():
    """A sharp planted step is no power law: the power law's residual is far above the planted noise."""
    x_axis = default_step_axis(40, 10, 1e5)
    y, truth = planted_trajectories(300, x_axis, seed=3, noise=0.02, lam_range=(10, 30), frac_learned=0,
                                    frac_unlearned=0, frac_ascending=0, tau_dist="uniform", dtype=np.float64)
    inside = (truth["tau"] > 1.6) & (truth["tau"] < 4.4)
    r = fit_power_laws(y, x_axis)
    noise_rss = x_axis.size * truth["noise"] ** 2
    assert np.median(r.rss[inside] / noise_rss[inside]) > 10


def test_edge_cases_constant_nan_three_points():
    const = np.full((1, A.size), 2.5)
    nan_row = np.sin(A / 1e4)[None, :] * 0 + power_law_curve(A, 10.0, 0.5, 1.0)
    nan_row[0, [3, 7, 20]] = np.nan
    few = np.full((1, A.size), np.nan)
    few[0, [0, 10, 29]] = [3.0, 2.0, 1.8]
    two = np.full((1, A.size), np.nan)
    two[0, [0, 29]] = 1.0
    r = fit_power_laws(np.vstack([const, nan_row, few, two]), A)
    assert r.status.tolist() == [1, 0, 0, 2]  # flat: alpha at its bound; NaNs skipped; 3 points fit; 2 invalid
    assert abs(r.k[0]) < 1e-12 and r.E[0] == pytest.approx(2.5) and r.rss[0] < 1e-20
    assert r.alpha[1] == pytest.approx(0.5, rel=1e-6) and r.n_points[1] == A.size - 3
    assert r.rss[2] < 1e-12 and r.n_points[2] == 3  # three points: interpolated exactly
    assert np.isnan(r.alpha[3]) and np.isnan(r.rss[3])


def test_dtype_float32_and_float64_agree():
    y, *_ = _planted_power_laws(200, seed=4, noise=0.05)
    r64 = fit_power_laws(y, A)
    r32 = fit_power_laws(y.astype(np.float32), A.astype(np.float32))
    for name in ("k", "alpha", "E", "rss"):
        assert getattr(r32, name).dtype == np.float64
    assert r32.status.dtype == np.int8
    np.testing.assert_allclose(r32.rss, r64.rss, rtol=1e-3)
    np.testing.assert_allclose(r32.alpha, r64.alpha, rtol=1e-2)


def test_chunks_do_not_change_the_result():
    y, *_ = _planted_power_laws(100, seed=5, noise=0.05)
    a, b = fit_power_laws(y, A), fit_power_laws(y, A, chunk_rows=7)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert len(fit_power_laws(np.zeros((0, A.size)), A)) == 0


@pytest.mark.parametrize("kw, match", [
    ({"axis": -A}, "finite positive axis"),
    ({"axis": A[:5]}, "axis has 5 points"),
    ({"alpha_bounds": (1.0, 0.5)}, "alpha_bounds must satisfy"),
    ({"alpha_bounds": "x"}, "alpha_bounds must be"),
    ({"n_grid": 2}, "n_grid must be >= 3"),
])
def test_bad_input_is_one_line(kw, match):
    y, *_ = _planted_power_laws(3)
    kw = {"axis": A, **kw}
    with pytest.raises(TokenscaleError, match=match):
        fit_power_laws(y, kw.pop("axis"), **kw)


def test_losses_must_be_2d():
    with pytest.raises(TokenscaleError, match="2-D"):
        fit_power_laws(np.ones(A.size), A)
