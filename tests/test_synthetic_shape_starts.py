"""The shape test over first checkpoints (tokenscale.synthetic.shape.shape_over_starts) on planted curves, batched
against the single-start test, and its figure."""

from __future__ import annotations

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.synthetic.figures import plot_shape_over_starts
from tokenscale.synthetic.shape import MIN_POINTS, shape_over_starts, shape_test

STEPS = np.geomspace(10.0, 3000.0, 30)


def _noisy(y, seed=0, sd=1e-4):
    return y + sd * np.random.default_rng(seed).standard_normal(y.size)


def test_verdict_flips_where_a_planted_power_law_turns_into_a_line():
    """Power law k·s^-1 + 1 up to step 200, then the line it is tangent to: starts before the bend see the power
    law, starts well after it see only the line."""
    s0 = 200.0
    pl = 50.0 / STEPS + 1.0
    line = 50.0 / s0 + 1.0 - 50.0 / s0**2 * (STEPS - s0)
    loss = _noisy(np.where(STEPS <= s0, pl, line))
    r = shape_over_starts(STEPS, loss)
    assert len(r["start_step"]) == STEPS.size - MIN_POINTS + 1 and r["start_step"][0] == STEPS[0]
    pref = dict(zip(r["start_step"], r["preferred"]))
    assert pref[STEPS[0]] == "power_law" and pref[STEPS[STEPS > 2 * s0][0]] == "linear"
    assert 0 < r["share_power_law"] < 1


def test_batched_equals_single_start():
    loss = _noisy(30.0 * STEPS**-0.7 + 2.0, seed=3)
    r = shape_over_starts(STEPS, loss, starts=STEPS[[0, 5, 12]])
    for s0, d, p, n in zip(r["start_step"], r["delta_aic"], r["preferred"], r["n_points"]):
        one = shape_test(STEPS, loss, transient=("start", s0), transform="none")
        assert d == pytest.approx(one["delta_aic"], rel=1e-9, abs=1e-9)
        assert (p, n) == (one["preferred"], one["n_points"])


def test_starts_leaving_too_few_points_are_skipped():
    loss = _noisy(3.0 - 1e-4 * STEPS)
    r = shape_over_starts(STEPS, loss, starts=[STEPS[-2], STEPS[-MIN_POINTS]])
    assert r["start_step"] == [STEPS[-MIN_POINTS]] and r["n_points"] == [MIN_POINTS]
    assert shape_over_starts(STEPS, loss, starts=[STEPS[-1]])["share_power_law"] is None
    with pytest.raises(TokenscaleError, match="strictly increasing"):
        shape_over_starts(STEPS[::-1], loss)


def test_shape_starts_figure(tmp_path):
    r = shape_over_starts(STEPS, _noisy(30.0 * STEPS**-0.7 + 2.0))
    paths = plot_shape_over_starts(r, tmp_path, title="t", marks={"fit.start": 100.0})
    assert paths[0].name == "fig10b_shape_starts.png" and all(p.exists() for p in paths)
