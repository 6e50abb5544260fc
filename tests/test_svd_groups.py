"""The shared-pulse SVD over equal-count learning-time groups (tokenscale.analysis.pulses.svd_groups_stage) and its
null of random widths and skews: known answers on planted token populations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit

from tokenscale.analysis import AnalysisOptions, analyze
from tokenscale.analysis.pulses import MIN_SVD_GROUPS, PAPER_SVD_GROUPS, null_energy


def _planted(lam_of_tau, n: int = 4000, seed: int = 0):
    """(N, K) losses on the demo's axis (36 log-spaced steps in [1, 2000]) of descending sigmoids with τ uniform
    on [0.3, 3.0] decades, Δ = 2 nats, widths λ(τ), noise σ = 0.01; and their true fits (as the fit table)."""
    rng = np.random.default_rng(seed)
    a = np.unique(np.round(np.geomspace(1, 2000, 36)))
    x = np.log10(a)
    tau = rng.uniform(0.3, 3.0, n)
    lam = lam_of_tau(tau)
    delta = np.full(n, 2.0)
    losses = 3.0 + delta[:, None] * expit(-lam[:, None] * (x[None] - tau[:, None]))
    losses += 0.01 * rng.standard_normal(losses.shape)
    fit = SimpleNamespace(transform="log10", axis=x, axis_orig=a, tau=tau, tau_orig=10**tau, lam=lam, delta=delta,
                          post=np.full(n, 3.0), status=np.zeros(n, int), category=np.zeros(n, int), r2=np.ones(n))
    return losses, fit


def _svd(lam_of_tau, **kw):
    losses, fit = _planted(lam_of_tau, **{k: kw.pop(k) for k in ("n", "seed") if k in kw})
    return analyze(losses, fit, AnalysisOptions(n_boot=0, selection="all", **kw)).svd


def _random_width(tau, seed=3):
    """λ log-uniform on [3, 30] per decade, drawn afresh every 0.02 decade of τ: groups of different widths."""
    cells = np.random.default_rng(seed).uniform(np.log(3.0), np.log(30.0), 200)
    return np.exp(cells[np.clip((tau / 0.02).astype(int), 0, 199)])


def test_identical_planted_pulses_give_energy_one_with_the_papers_group_count():
    sv = _svd(lambda t: np.full(t.size, 6.0))
    assert sv["n_groups_svd"] == PAPER_SVD_GROUPS
    assert sv["svd_energy1"] > 0.995
    assert sv["svd_energy1"] > sv["svd_null_energy1"]["ci"][1]


def test_random_width_planted_pulses_sit_near_the_null_far_below_identical_ones():
    sv = _svd(_random_width)
    lo, hi = sv["svd_null_energy1"]["ci"]
    assert sv["n_groups_svd"] >= MIN_SVD_GROUPS
    assert lo - 0.05 <= sv["svd_energy1"] <= hi + 0.05
    same = _svd(lambda t: np.full(t.size, 6.0))["svd_energy1"]
    assert 1 - sv["svd_energy1"] > 10 * (1 - same)  # measured: 0.028 vs 0.00016 outside mode 1


def test_group_count_follows_the_option_and_drops_only_when_tokens_are_too_few():
    assert _svd(lambda t: np.full(t.size, 6.0), svd_groups=12)["n_groups_svd"] == 12
    few = _svd(lambda t: np.full(t.size, 6.0), n=300)
    assert few["n_groups_svd"] == few["n_tokens_svd"] // 20 < PAPER_SVD_GROUPS
    assert few["n_tokens_svd"] >= 10  # the groups are still formed


def test_null_is_reproducible_and_identical_widths_without_skew_give_one(monkeypatch):
    x = np.log10(np.unique(np.round(np.geomspace(1, 2000, 36))))
    u = np.linspace(-0.5, 0.5, 41)
    taus = np.linspace(1.0, 2.3, 20)[:, None] + np.linspace(-0.02, 0.02, 8)[None, :]
    a, b = (null_energy(x, u, taus, (3.0, 30.0), n_draws=50, seed=1) for _ in range(2))
    assert a["mean"] == b["mean"] and a["ci"][0] <= a["mean"] <= a["ci"][1] < 1.0
    monkeypatch.setattr("tokenscale.analysis.pulses.NULL_SKEW", 0.0)
    x_fine = np.linspace(0.0, 3.3, 2000)  # resolved pulses: translation leaves the shape, energy 1
    assert null_energy(x_fine, u, taus, (6.0, 6.0), n_draws=3)["mean"] == pytest.approx(1.0, abs=1e-6)


def test_svd_groups_option_is_validated_by_the_schema():
    from tokenscale import TokenscaleError
    import tokenscale.studies  # noqa: F401  (registers the study sections)
    from tokenscale.config import validate_config

    assert validate_config({})["analysis"]["svd_groups"] is None
    with pytest.raises(TokenscaleError, match="svd_groups"):
        validate_config({"analysis": {"svd_groups": 1}})
