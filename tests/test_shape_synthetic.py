"""The shape test (tokenscale.synthetic.shape) on known answers, and the synthetic-run figures (Fig. 8–10)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.synthetic.shape import aicc, gaussian_aic, shape_test
from tokenscale.synthetic.figures import plot_level_trajectories, plot_levels, plot_params_vs_tau

STEPS = np.geomspace(100.0, 1e5, 60)


def _noisy(y, seed=0, sd=1e-5):
    return y + sd * np.random.default_rng(seed).standard_normal(y.size)


def test_linear_curve_prefers_line_and_recovers_slope():
    # a random-init plateau, a sharp drop at step 1000 (the dpeak cut), then exactly L = 3 − 2.5e-5·s
    loss = np.where(STEPS < 1000, 4.5, 3.0 - 2.5e-5 * STEPS)
    r = shape_test(STEPS, _noisy(loss))
    assert r["transient_rule"] == "dpeak"
    assert r["transient_step"] == pytest.approx(STEPS[STEPS >= 1000][0])
    assert r["n_points"] == int(np.sum(STEPS >= 1000))
    assert r["delta_aic"] < 0 and r["preferred"] == "linear"
    assert r["linear"]["params"]["b"] == pytest.approx(2.5e-5, rel=0.01)
    assert r["linear"]["params"]["a"] == pytest.approx(3.0, rel=0.01)
    assert r["akaike_weights"]["linear"] > 0.99
    assert sum(r["akaike_weights"].values()) == pytest.approx(1.0)


def test_power_law_curve_prefers_power_law_and_recovers_alpha():
    plateau = 10 * 1000.0**-0.5 + 2
    loss = np.where(STEPS < 1000, plateau, 10 * STEPS**-0.5 + 2)
    r = shape_test(STEPS, _noisy(loss, seed=1))
    assert r["delta_aic"] > 0 and r["preferred"] == "power_law"
    pl = r["power_law"]["params"]
    assert pl["alpha"] == pytest.approx(0.5, rel=0.05)
    assert pl["E"] == pytest.approx(2.0, rel=0.05)
    assert r["power_law"]["k"] == 3 and r["linear"]["k"] == 2
    assert r["power_law"]["r2"] > 0.999


def test_aic_matches_hand_computation():
    # L = 6.09 − 1.03·s is the least-squares line
    # (s̄ = 3, ȳ = 3, Σ(s−s̄)(y−ȳ) = −10.3, Σ(s−s̄)² = 10);
    # residuals −0.06, 0.07, −0.10, 0.23, −0.14 give RSS = 0.091
    steps = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    loss = np.array([5.0, 4.1, 2.9, 2.2, 0.8])
    r = shape_test(steps, loss, transient="none", transform="none")
    lin = r["linear"]
    assert r["n_points"] == 5
    assert lin["params"]["a"] == pytest.approx(6.09) and lin["params"]["b"] == pytest.approx(1.03)
    assert lin["rss"] == pytest.approx(0.091)
    assert lin["aic"] == pytest.approx(5 * math.log(0.091 / 5) + 4)
    assert lin["aicc"] == pytest.approx(lin["aic"] + 2 * 2 * 3 / (5 - 2 - 1))
    assert r["power_law"]["aicc"] == pytest.approx(r["power_law"]["aic"] + 2 * 3 * 4 / (5 - 3 - 1))
    assert r["power_law"]["aic"] == pytest.approx(5 * math.log(r["power_law"]["rss"] / 5) + 6)
    assert r["delta_aic"] == pytest.approx(lin["aic"] - r["power_law"]["aic"])
    w_lin = 1.0 / (1.0 + math.exp(-0.5 * (r["power_law"]["aic"] - lin["aic"])))
    assert r["akaike_weights"]["linear"] == pytest.approx(w_lin)
    assert gaussian_aic(0.091, 5, 2) == pytest.approx(5 * math.log(0.0182) + 4)
    assert math.isnan(aicc(0.0, 4, 3))


@pytest.mark.parametrize("steps,loss,match", [
    ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "leaves 3 post-transient points"),
    ([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 2.0, np.nan, 1.0, 0.5], r"loss\[2\]=nan is not finite"),
    ([1.0, 2.0, 2.0, 4.0, 5.0], [3.0, 2.0, 1.5, 1.0, 0.5], r"strictly increasing, got steps\[2\]=2\.0"),
    ([0.0, 2.0, 3.0, 4.0, 5.0], [3.0, 2.0, 1.5, 1.0, 0.5], r"steps\[0\]=0\.0 is not a positive step"),
])
def test_bad_inputs(steps, loss, match):
    with pytest.raises(TokenscaleError, match=match):
        shape_test(np.array(steps), np.array(loss), transient="none")


def test_dpeak_leaving_too_few_points():
    # a line on a log axis falls fastest per decade at its last point: dpeak keeps 1 point
    with pytest.raises(TokenscaleError, match=r"dpeak .* leaves 1 post-transient points; need >= 4"):
        shape_test(STEPS, 3.0 - 2.5e-5 * STEPS)


# ----------------------------------------------------------------------------- figures
def _synthetic_run(n_per=6, levels=(1, 2, 3), K=25, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.geomspace(10.0, 1e4, K)
    x = np.log10(steps)
    lv = np.repeat(np.array(levels), n_per)
    tau = 1.5 + 0.6 * lv + 0.2 * rng.standard_normal(lv.size)
    lam = 6.0 * np.exp(0.2 * rng.standard_normal(lv.size))
    delta = 3.1 + 0.1 * rng.standard_normal(lv.size)
    post = np.zeros(lv.size)
    losses = post[:, None] + delta[:, None] / (1 + np.exp(lam[:, None] * (x - tau[:, None])))
    losses += 0.05 * rng.standard_normal(losses.shape)
    valid = lv != levels[-1]  # the last level has no valid fit
    tau[~valid] = np.nan
    fits = {"tau": tau, "lam": lam, "delta": delta, "post": post, "valid": valid}
    return steps, lv, losses, fits


def _written(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_plot_levels(tmp_path):
    steps, lv, losses, _ = _synthetic_run()
    levels = np.unique(lv)
    loss = np.stack([losses[lv == v].mean(0) for v in levels])
    acc = np.clip(1.0 - loss / 3.1, 0.0, 1.0)
    paths = plot_levels(steps, levels, loss, acc, tmp_path, title="uniform-Mano")
    _written(paths)
    assert paths[0].name == "fig08_levels.png"
    with pytest.raises(TokenscaleError, match="accuracy has shape"):
        plot_levels(steps, levels, loss, acc[:, :-1], tmp_path, title="t")
    # the level-only baselines are drawn, whether their keys are ints or (from report.json) strings
    drawn = {}
    for name, base in (("none", None), ("int", {int(v): 0.4 for v in levels}), ("str", {str(v): 0.4 for v in levels})):
        drawn[name] = plot_levels(steps, levels, loss, acc, tmp_path / name, title="t", baseline=base)[0].read_bytes()
    assert drawn["int"] == drawn["str"] != drawn["none"]


def test_plot_level_trajectories(tmp_path):
    steps, lv, losses, fits = _synthetic_run()
    paths = plot_level_trajectories(steps, losses, lv, fits, tmp_path, per_level=3, seed=1)
    _written(paths)
    assert paths[0].name == "fig09_level_trajectories.png"
    fits_alias = {("l_post" if k == "post" else k): v for k, v in fits.items()}
    _written(plot_level_trajectories(steps, losses, lv, fits_alias, tmp_path / "alias", per_level=10))
    with pytest.raises(TokenscaleError, match="fits lacks 'lam'"):
        plot_level_trajectories(steps, losses, lv, {k: v for k, v in fits.items() if k != "lam"}, tmp_path)


def test_plot_params_vs_tau(tmp_path):
    steps, lv, _, fits = _synthetic_run()
    paths = plot_params_vs_tau(10.0 ** fits["tau"], fits["delta"], fits["lam"], lv, tmp_path)
    _written(paths)
    assert paths[0].name == "fig10_params_vs_tau.png"
