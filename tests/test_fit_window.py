"""tokenscale.fit.window (config fit.start): the unigram cross-entropy, the first checkpoint below it, the fallbacks,
and the evidence for the rule — a planted population that learns its marginal first and its own event later is
recovered (τ, β) by fits that start where the rule says, not by fits of the whole trajectory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tokenscale import TokenscaleError
from tokenscale.analysis.tail import fit_truncated_power_law
from tokenscale.analysis.stage import fit_columns
from tokenscale.fit import fit_sigmoids
from tokenscale.fit.window import MIN_POINTS, RULES, context_free_entropy, fit_start, fit_window, target_counts

REPO = Path(__file__).resolve().parents[1]


def test_context_free_entropy_is_the_add_half_unigram_loss():
    # q = (c + 1/2) / (sum c + V/2) = (3.5, 1.5, 0.5) / 5.5
    h = context_free_entropy([3, 1, 0], [0, 0, 1, 2])
    q = np.array([3.5, 1.5, 0.5]) / 5.5
    assert h == pytest.approx(np.mean(-np.log(q[[0, 0, 1, 2]])), rel=1e-12)


def test_context_free_entropy_rejects_ids_outside_the_vocabulary():
    with pytest.raises(TokenscaleError, match="target token id 3 is outside the vocabulary"):
        context_free_entropy([1, 1, 1], [0, 3])
    with pytest.raises(TokenscaleError, match="no target tokens"):
        context_free_entropy([1, 1], [])


def test_fit_start_is_the_first_checkpoint_at_or_below_h1():
    m = np.array([8.0, 7.5, 7.0, 6.7, 6.5, 6.6, 6.0, 5.5, 5.0, 4.8, 4.6, 4.5, 4.4])
    assert fit_start(m, 6.7) == (3, "")
    assert fit_start(m, 9.0) == (0, "")


def test_fit_start_falls_back_to_every_checkpoint_with_a_note():
    m = np.linspace(8.0, 5.0, 12)
    k, note = fit_start(m, 4.0)
    assert k == 0 and "never reaches" in note
    k, note = fit_start(m, m[-MIN_POINTS + 1])  # fewer than MIN_POINTS would remain
    assert k == 0 and f"fewer than {MIN_POINTS}" in note
    with pytest.raises(TokenscaleError, match="finite"):
        fit_start([1.0, np.nan], 1.0)


def test_fit_window_rules_and_row_filter():
    axis = np.arange(1, 13, dtype=float)
    losses = np.tile(np.linspace(8.0, 4.0, 12), (3, 1))
    losses[2, 5] = np.nan  # a row with a hole does not enter the mean
    ids = np.array([0, 1, 1])
    w = fit_window("unigram", losses, axis, counts=[1, 3], target_ids=ids)
    h1 = context_free_entropy([1, 3], ids[:2])
    assert w["h_unigram"] == pytest.approx(h1) and w["n_rows"] == 2
    assert w["start_index"] == 0 and w["start"] == 1.0 and "never reaches" in w["note"]  # H1 = 0.78 nats
    assert fit_window("first", losses, axis)["start_index"] == 0
    w = fit_window("unigram", losses, axis)
    assert w["start_index"] == 0 and "no training data" in w["note"] and w["h_unigram"] is None
    with pytest.raises(TokenscaleError, match="fit.start must be one of"):
        fit_window("trough", losses, axis)
    with pytest.raises(TokenscaleError, match="do not match an axis of 11 points"):
        fit_window("first", losses, axis[:-1])


def test_fit_window_start_on_a_curve_crossing_h1():
    axis = np.geomspace(1, 2000, 20)
    mean = np.linspace(2.5, 0.5, 20)
    counts, ids = np.array([10, 10, 10, 10]), np.array([0, 1, 2, 3])  # uniform: H1 = ln 4 = 1.386
    w = fit_window("unigram", np.tile(mean, (4, 1)), axis, counts=counts, target_ids=ids)
    assert w["h_unigram"] == pytest.approx(np.log(4))
    assert w["start_index"] == 11 and w["start"] == pytest.approx(axis[11]) and w["note"] == ""  # 2.5 - 2k/19 <= 1.386


def test_target_counts_stream_and_rows():
    stream = SimpleNamespace(seq_len=3, n_samples=2, stride=3, supervise="all", vocab_size=5,
                             tokens=np.array([4, 0, 1, 2, 3, 1, 2, 9]))  # targets = tokens[1:7]
    np.testing.assert_array_equal(target_counts(stream), np.bincount([0, 1, 2, 3, 1, 2], minlength=5))
    rows = SimpleNamespace(seq_len=2, n_samples=2, stride=3, supervise="last", vocab_size=4,
                           tokens=np.array([0, 1, 2, 3, 0, 1]))  # rows (0 1 2), (3 0 1): last labels 2, 1
    np.testing.assert_array_equal(target_counts(rows), [0, 1, 1, 0])
    rows.supervise = "all"
    np.testing.assert_array_equal(target_counts(rows), [1, 2, 1, 0])


def test_schema_enum_is_the_rules():
    schema = yaml.safe_load((REPO / "src" / "tokenscale" / "config.schema.yaml").read_text())
    assert tuple(schema["properties"]["fit"]["properties"]["start"]["enum"]) == RULES


def test_fit_columns_selects_the_fitted_checkpoints_and_rejects_another_axis():
    losses = np.arange(12.0).reshape(2, 6)
    axis = {"step": np.array([1, 2, 4, 8, 16, 32])}
    fit = SimpleNamespace(axis_orig=np.array([4.0, 8.0, 16.0, 32.0]))
    np.testing.assert_array_equal(fit_columns(losses, axis, fit, "f.h5"), losses[:, 2:])
    fit.axis_orig = np.array([4.0, 8.0, 16.0, 33.0])
    with pytest.raises(TokenscaleError, match="is not the end of the trajectories' axis"):
        fit_columns(losses, axis, fit, "f.h5")


# --- the evidence: a planted population with a marginal stage before every token's own event -----------------

def _planted(n: int = 4000, beta: float = 1.8, seed: int = 1):
    """(N, K) losses on the demo's axis (36 log-spaced steps in [1, 2000]), (K,) steps, (N,) true τ of each token's
    own event (log10 step, density ∝ a^−β from step 150) and the plateau between the stages (the planted unigram
    loss). Stage 1: every token drops ~1 nat around step 50, as a model learning the marginal."""
    rng = np.random.default_rng(seed)
    a = np.unique(np.round(np.geomspace(1, 2000, 36)))
    x = np.log10(a)
    tau2 = np.log10(150 * (1 - rng.random(n)) ** (-1 / (beta - 1)))
    d2 = 1.5 + 0.2 * rng.random(n)
    tau1, d1 = np.log10(50) + 0.1 * rng.standard_normal(n), 1.0 + 0.1 * rng.random(n)
    lam = 6.0
    losses = 4.0 + 0.02 * rng.standard_normal((n, x.size))
    losses += d2[:, None] / (1 + np.exp(lam * (x[None] - tau2[:, None])))
    losses += d1[:, None] / (1 + np.exp(lam * (x[None] - tau1[:, None])))
    return losses, a, tau2, float(np.mean(4.0 + d2))


def _beta(tau_x: np.ndarray, lo: float, hi: float) -> float:
    t = 10.0 ** tau_x[np.isfinite(tau_x)]
    t = t[(t >= lo) & (t <= hi)]
    edges = np.geomspace(lo, hi, 401)
    c, _ = np.histogram(t, edges)
    s, _ = np.histogram(t, edges, weights=np.log(t))
    return fit_truncated_power_law(c, s, edges, n_boot=0)["beta"]


def test_planted_two_stage_tokens_are_recovered_by_fits_from_the_rule_start():
    losses, a, tau2, plateau = _planted()
    k, note = fit_start(losses.mean(axis=0), plateau)
    assert note == "" and 60 <= a[k] <= 160  # between the stages
    inwin = tau2 < np.log10(a[-1])
    whole = fit_sigmoids(losses, a, transform="log10")
    ruled = fit_sigmoids(losses[:, k:], a[k:], transform="log10")
    err_whole = np.nanmedian(np.abs(whole.tau - tau2)[inwin])
    err_ruled = np.nanmedian(np.abs(ruled.tau - tau2)[inwin])
    assert err_ruled < 0.05 < 0.15 < err_whole  # decades
    b_true = _beta(tau2, 150, a[-1])
    b_whole, b_ruled = _beta(whole.tau, 150, a[-1]), _beta(ruled.tau, 150, a[-1])
    assert abs(b_ruled / b_true - 1) < 0.1 < 0.2 < abs(b_whole / b_true - 1)
