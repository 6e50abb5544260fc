"""scripts/reconstruction-residual.py (docs/reconstruction.md): on planted trajectories, the sigmoid-implied
derivative recovers a one-event spectrum from the whole window, and a token population that learns in two stages
is recovered only when the fits start between the stages — the diagnosis the note makes on t_moe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tokenscale.analysis.numerics import fit_quality, pulse

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reconstruction-residual.py"


@pytest.fixture(scope="module")
def rr():
    spec = importlib.util.spec_from_file_location("reconstruction_residual", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _planted(two_stage: bool, n: int = 3000, seed: int = 0):
    """(N, K) losses on 40 log-spaced steps in [1, 2000], (K,) steps, (K,) true −dL/dx of the mean loss.
    Stage 2: τ heavy-tailed from step 150 (density ∝ a^−1.9); stage 1 (two_stage): every token also drops ~1 nat
    around step 50, as a model learning the unigram marginal."""
    rng = np.random.default_rng(seed)
    a = np.unique(np.round(np.geomspace(1, 2000, 40)))
    x = np.log10(a)
    stages = [(np.log10(150 * (1 - rng.random(n)) ** (-1 / 0.9)), 1.5 + 0.2 * rng.random(n))]
    if two_stage:
        stages.append((np.log10(50) + 0.1 * rng.standard_normal(n), 1.0 + 0.1 * rng.random(n)))
    lam = np.full(n, 6.0)
    losses = np.full((n, x.size), 4.0) + 0.02 * rng.standard_normal((n, x.size))
    true = np.zeros(x.size)
    for tau, delta in stages:
        losses += delta[:, None] / (1 + np.exp(lam[:, None] * (x[None] - tau[:, None])))
        true += pulse(x[None], tau[:, None], lam[:, None], delta[:, None]).mean(axis=0)
    return losses, a, true


def test_one_event_per_token_is_recovered_from_the_whole_window(rr):
    losses, a, true = _planted(two_stage=False)
    post = a >= 190
    got = rr.implied_derivative(losses, a, 0, np.log10(a[post]))
    assert fit_quality(got, true[post])[0] > 0.99


def test_two_stage_tokens_are_recovered_only_by_fits_starting_between_the_stages(rr):
    losses, a, true = _planted(two_stage=True)
    post = a >= 190
    x = np.log10(a[post])
    whole = fit_quality(rr.implied_derivative(losses, a, 0, x), true[post])[0]
    trough = fit_quality(rr.implied_derivative(losses, a, int(np.searchsorted(a, 100)), x), true[post])[0]
    assert whole < 0.97 < 0.99 < trough


def test_residual_share_sums_to_one_and_names_the_worst_point(rr):
    share = rr.residual_share(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0]))
    np.testing.assert_allclose(share, [0.0, 0.8, 0.2])
