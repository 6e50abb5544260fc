"""Hypothesis B per token (tokenscale.analysis.hypothesis_b): known answers on planted sigmoids and planted power
laws, the criteria, and the summary keys and figure after run_analysis on a small planted case."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokenscale.studies  # noqa: F401  (registers the config sections run_analysis validates)
from tokenscale.analysis import AnalysisOptions
from tokenscale.analysis import stage as analysis_stage
from tokenscale.analysis.hypothesis_b import compare_tokens, hypothesis_b, information_criteria, read_examples
from tokenscale.fit import fit_sigmoids, save_fits
from tokenscale.fit.planted import default_step_axis, planted_trajectories
from tokenscale.fit.powerlaw_token import power_law_curve

AXIS = np.round(default_step_axis(24, 10, 1e5))  # integer steps, as a trajectory axis
OPTS = AnalysisOptions(n_boot=50, seed=0)


def _planted_sigmoids(n=300, seed=0):
    y, _ = planted_trajectories(n, AXIS, seed=seed, noise=(0.03, 0.1), frac_learned=0, frac_unlearned=0,
                                frac_ascending=0, tau_dist="uniform", lam_range=(3, 20), delta_range=(1, 4))
    return y


def _planted_power_laws(n=300, seed=1):
    rng = np.random.default_rng(seed)
    k, alpha, E = rng.uniform(5, 20, n), rng.uniform(0.3, 0.8, n), rng.uniform(1, 3, n)
    y = power_law_curve(AXIS, k, alpha, E) + rng.uniform(0.03, 0.1, n)[:, None] * rng.standard_normal((n, AXIS.size))
    return y.astype(np.float32)


def test_information_criteria_known_values():
    aic, aicc = information_criteria([2.0], [10], 3)
    assert aic[0] == pytest.approx(10 * np.log(0.2) + 6)
    assert aicc[0] == pytest.approx(aic[0] + 24 / 6)
    assert np.isnan(information_criteria([1.0], [5], 4)[1][0])  # n <= p + 1: AICc undefined


def test_planted_sigmoids_are_won_by_the_sigmoid():
    y = _planted_sigmoids()
    s, _ = hypothesis_b(y, fit_sigmoids(y, AXIS), OPTS)
    assert s["criterion"] == "aicc" and s["all"]["n_tokens"] == 300
    assert s["all"]["aicc"]["share_sigmoid"] > 0.8
    lo, hi = s["all"]["aicc"]["median_delta_ci"]
    assert 0 < lo <= s["all"]["aicc"]["median_delta"] <= hi


def test_planted_power_laws_are_won_by_the_power_law():
    y = _planted_power_laws()
    s, _ = hypothesis_b(y, fit_sigmoids(y, AXIS), OPTS)
    assert s["all"]["aicc"]["share_power_law"] > 0.8
    assert s["all"]["aicc"]["median_delta"] < 0
    assert s["all"]["aic"]["share_power_law"] > 0.8


def test_flat_rows_compare_by_penalties_and_bad_rows_are_not_compared():
    y = np.vstack([np.full((1, AXIS.size), 2.0), _planted_sigmoids(5)]).astype(np.float32)
    y[1, 3] = np.nan
    fit = fit_sigmoids(y, AXIS)
    c = compare_tokens(y, fit, OPTS)
    assert not c["compared"][1]  # a NaN in the row: the sigmoid fit is invalid_input, the row is not compared
    n = AXIS.size  # both fit a flat row to round-off: RSS at the floor, the penalties alone decide
    assert c["compared"][0] and c["delta_aicc"][0] == pytest.approx((6 + 24 / (n - 4)) - (8 + 40 / (n - 5)))


def test_run_analysis_writes_the_keys_and_the_figure(tmp_path, monkeypatch):
    y = np.vstack([_planted_sigmoids(400), _planted_power_laws(100)])
    fit = fit_sigmoids(y, AXIS)
    save_fits(tmp_path / "fits.h5", fit)
    axis = {"step": AXIS.astype(np.int64), "tokens": (AXIS * 64).astype(np.int64)}
    monkeypatch.setattr(analysis_stage, "read_run_trajectories", lambda paths: (y, axis, {"attrs": {}}))
    out = tmp_path / "analysis"
    analysis_stage.run_analysis(trajectories=["planted"], fits=tmp_path / "fits.h5", run="planted",
                                options={"n_boot": 20}, analysis=out / "analysis.h5", summary=out / "summary.json")
    hb = json.loads((out / "summary.json").read_text())["hypothesis_b"]
    assert hb["all"]["n_tokens"] == 500 and hb["selection"]["name"] == "quality"
    assert 0 < hb["selection"]["n_tokens"] <= 500
    for group in ("all", "selection"):
        for crit in ("aicc", "aic"):
            assert set(hb[group][crit]) >= {"share_sigmoid", "share_power_law", "median_delta", "median_delta_ci"}
    assert hb["all"]["aicc"]["share_sigmoid"] == pytest.approx(0.8, abs=0.1)  # 400 sigmoids, 100 power laws
    ex = read_examples(out / "analysis.h5")
    assert len(ex["index"]) == 6 and np.all(np.diff(ex["delta"]) >= 0)
    from tokenscale.analysis import figures

    monkeypatch.setattr(figures, "make_figures", lambda *a, **k: {})  # the other figures: tests/test_figures.py
    figs = figures.figures_from_file(out / "analysis.h5", tmp_path / "figs", run_name="planted")
    assert (tmp_path / "figs" / "fig13_hypothesis_b.png").is_file() and "fig13_hypothesis_b" in figs
