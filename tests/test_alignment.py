"""tokenscale.alignment.compute (App. A.2 / Fig. 7), the bootstraps and instances of tokenscale.analysis and the seed agreement on planted data with known answers."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.alignment import compute as al
from tokenscale.alignment.figures import plot_alignment
from tokenscale.analysis import bootstrap as bs
from tokenscale.analysis import instances as inst
from tokenscale.data.tokensets import token_frequencies
from tokenscale.seeds.compute import seed_agreement
from tokenscale.seeds.figures import plot_seed_agreement


def _planted(n=6000, seed=0):
    """τ (log10 steps) = 3 + 0.3·domain − 0.25·log10(1 + freq) + 0.05·log2(dep) + noise."""
    rng = np.random.default_rng(seed)
    dom = rng.integers(0, 3, n)
    freq = (rng.pareto(1.0, n) * 5).astype(np.int64)
    dep = 2 ** rng.integers(0, 6, n)
    tau = 3 + 0.3 * dom - 0.25 * np.log10(1 + freq) + 0.05 * np.log2(dep) + 0.3 * rng.standard_normal(n)
    return tau, dom, freq, dep


# ----------------------------------------------------------------------------- group means
def test_group_means_recovers_planted_means():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, 30000)
    tau = np.array([1.0, 2.0, 4.0])[g] + rng.standard_normal(g.size)
    m = bs.group_means(tau, g, n_boot=200, seed=0, keys=[0, 1, 2, 7])
    assert set(m) == {0, 1, 2, 7}
    for k, truth in enumerate([1.0, 2.0, 4.0]):
        assert m[k]["ci_low"] < m[k]["mean"] < m[k]["ci_high"]
        assert abs(m[k]["mean"] - truth) < 0.05
        assert m[k]["ci_high"] - m[k]["ci_low"] < 0.1
    assert m[7]["n"] == 0 and np.isnan(m[7]["mean"]) and np.isnan(m[7]["ci_low"])


def test_group_means_small_group_has_nan_ci_and_weights():
    tau = np.array([1.0, 2.0, 3.0, 10.0, 10.0])
    g = np.array([0, 0, 0, 1, 1])
    m = bs.group_means(tau, g, n_boot=50, min_count=3)
    assert m[0]["mean"] == pytest.approx(2.0) and np.isfinite(m[0]["ci_low"])
    assert m[1]["n"] == 2 and np.isnan(m[1]["ci_low"]) and np.isnan(m[1]["ci_high"])
    w = bs.group_means(tau, g, weights=[1, 1, 2, 1, 1], n_boot=50, min_count=3)
    assert w[0]["mean"] == pytest.approx((1 + 2 + 6) / 4)


@pytest.mark.parametrize("n, max_n", [(200, 10_000), (4000, 400)])  # scipy path; rescaled m-out-of-n path
def test_group_means_ci_coverage(n, max_n):
    """Over 150 planted data sets (skewed τ) the 90 % CI covers the true mean close to 90 % of the time."""
    rng = np.random.default_rng(2)
    hits = 0
    reps = 150
    for r in range(reps):
        tau = rng.exponential(1.0, n)  # true mean 1
        m = bs.group_means(tau, np.zeros(n, int), n_boot=200, seed=r, confidence=0.9, max_n=max_n)[0]
        hits += m["ci_low"] <= 1.0 <= m["ci_high"]
    assert 0.80 <= hits / reps <= 0.97  # binomial sd ~ 0.025 around 0.9


# ----------------------------------------------------------------------------- spearman
def test_spearman_monotone_negative_and_independent_covers_zero():
    rng = np.random.default_rng(3)
    freq = rng.pareto(1.0, 3000) * 10
    tau = -np.log10(1 + freq) + 0.3 * rng.standard_normal(freq.size)
    s = bs.spearman_ci(freq, tau, n_boot=200, seed=0)
    assert s["rho"] < -0.5 and s["ci_low"] < s["rho"] < s["ci_high"] < 0 and s["n"] == 3000
    assert s["p_value"] < 1e-10
    covered = 0
    for r in range(40):
        x, y = rng.standard_normal((2, 500))
        s = bs.spearman_ci(x, y, n_boot=200, seed=r)
        covered += s["ci_low"] <= 0 <= s["ci_high"]
    assert covered >= 33  # 95 % CIs: expected 38 of 40


def test_spearman_subsampled_ci_matches_full_bootstrap():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(6000)
    y = 0.5 * x + rng.standard_normal(6000)
    full = bs.spearman_ci(x, y, n_boot=300, seed=0, max_n=10_000)
    sub = bs.spearman_ci(x, y, n_boot=300, seed=0, max_n=1000)
    assert full["rho"] == sub["rho"]
    w_full, w_sub = full["ci_high"] - full["ci_low"], sub["ci_high"] - sub["ci_low"]
    assert 0.75 < w_sub / w_full < 1.33
    assert sub["ci_low"] < sub["rho"] < sub["ci_high"]


# ----------------------------------------------------------------------------- frequencies
def test_token_frequencies_chunked_memmap_equals_bincount(tmp_path):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 300, 10_007).astype(np.uint16)
    ids.tofile(tmp_path / "t.bin")
    mm = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r", shape=(ids.size,))
    c = token_frequencies(mm, 320, chunk=1000)
    assert c.dtype == np.int64 and c.shape == (320,)
    np.testing.assert_array_equal(c, np.bincount(ids, minlength=320))
    tid = np.array([[0, 5], [319, 7]])
    np.testing.assert_array_equal(al.instance_frequency(tid, c), c[[0, 5, 319, 7]])


def test_frequency_bins_log_spaced_with_unseen_bin():
    f = np.array([0, 1, 2, 3, 9, 10, 99, 100, 999, 1000, 0])
    b, edges = al.frequency_bins(f, n_bins=3)
    assert b[0] == 0 and b[-1] == 0 and (b[1:-1] >= 1).all()
    assert edges[0] == 1 and edges[-1] == 1001
    assert np.all(np.diff(b[1:-1]) >= 0)  # monotone in frequency
    for fi, bi in zip(f, b):
        if bi:
            assert edges[bi - 1] <= fi < edges[bi]
    bf, ef = al.frequency_bins(np.array([0.5, 5.0, 50.0]), n_bins=2)
    assert list(bf) == [1, 2, 2] and ef[-1] == 50.0


# ----------------------------------------------------------------------------- align / seeds
def test_align_table_recovers_planted_structure():
    tau, dom, freq, dep = _planted()
    valid = np.ones(tau.size, bool)
    valid[::10] = False
    t = al.align(tau.reshape(60, 100), valid, domain=dom.reshape(60, 100).astype(np.int16),
                 domain_names=["docs", "code", "mine"], freq_of_instance=freq, dependency=dep, n_boot=100, seed=0)
    json.dumps(t, allow_nan=False)  # strict JSON
    assert t["n_valid"] == valid.sum() and t["transform"] == "log10"
    means = [r["mean"] for r in t["domain"]["groups"]]
    assert [r["label"] for r in t["domain"]["groups"]] == ["docs", "code", "mine"]
    assert np.all(np.diff(means) > 0.2)
    r0 = t["domain"]["groups"][0]
    assert r0["mean_orig"] == pytest.approx(10 ** r0["mean"]) and r0["ci_low_orig"] < r0["mean_orig"]
    assert t["domain"]["test"]["p_value"] < 1e-10
    fr = t["frequency"]
    assert fr["groups"][0]["label"] == "0 (unseen)"
    assert fr["spearman"]["ci_high"] < 0
    ok = [r["mean"] for r in fr["groups"] if r["n"] >= 100]
    assert ok[0] > ok[-1]
    de = t["dependency"]
    assert [r["code"] for r in de["groups"]] == [1, 2, 4, 8, 16, 32]
    assert de["spearman"]["ci_low"] > 0
    t2 = al.align(tau, valid, domain=dom, domain_names=["docs", "code", "mine"], n_boot=100, seed=0)
    assert t2["frequency"] is None and t2["dependency"] is None
    assert t2["domain"] == t["domain"]  # panels use independent seeds


def test_seed_agreement_identical_and_noisy():
    rng = np.random.default_rng(6)
    a = rng.normal(3, 0.5, 2000)
    v = np.ones(a.size, bool)
    s = seed_agreement(a, a.copy(), v, v, n_boot=100)
    assert s["spearman"]["rho"] == pytest.approx(1.0) and s["spearman"]["ci_low"] == pytest.approx(1.0)
    assert s["median_abs_diff"] == 0 and s["diff_iqr"] == 0 and s["n"] == 2000
    vb = v.copy()
    vb[:100] = False
    b = a + rng.normal(0, 0.1, a.size)
    b[:100] = np.nan
    s = seed_agreement(a, b, v, vb, n_boot=100)
    assert s["n"] == 1900 and s["n_only_a"] == 100 and s["n_only_b"] == 0
    assert 0.9 < s["spearman"]["rho"] < 1
    assert s["median_abs_diff"] == pytest.approx(0.0674, rel=0.15)  # 0.6745·σ for Δ ~ N(0, 0.1²)


@dataclass
class _Fit:
    tau: np.ndarray
    status: np.ndarray
    category: np.ndarray
    token_index: np.ndarray | None = None

    def __len__(self):
        return self.tau.size


def test_instance_tau_places_rows_by_token_index():
    f = _Fit(np.array([1.0, 2.0, np.nan, 4.0]), np.array([0, 0, 2, 0]), np.array([1, 2, 3, 0]),
             token_index=np.array([5, 0, 3, 1]))
    tau, valid = inst.instance_tau(f, 6)
    assert tau[5] == 1.0 and tau[0] == 2.0 and np.isnan(tau[2])
    assert valid.tolist() == [True, False, False, False, False, True]  # category 0 (learned) not by default


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_one_line_errors():
    tau = np.linspace(0, 1, 50)
    v = np.ones(50, bool)
    dom = np.zeros(50, int)
    with pytest.raises(TokenscaleError, match="groups has 49 entries, expected 50"):
        bs.group_means(tau, np.zeros(49, int))
    with pytest.raises(TokenscaleError, match="valid_mask selects no token instance"):
        al.align(tau, np.zeros(50, bool), domain=dom, domain_names=["a"])
    with pytest.raises(TokenscaleError, match=r"domain\[3\] = 2 is not a code into domain_names \(2 names\)"):
        al.align(tau, v, domain=np.where(np.arange(50) == 3, 2, 0), domain_names=["a", "b"])
    with pytest.raises(TokenscaleError, match=r"frequency\[1\] = -1.0 is negative"):
        al.frequency_bins(np.array([3, -1, 2]))
    with pytest.raises(TokenscaleError, match="n_bins must be a positive integer"):
        al.frequency_bins(np.array([3, 1]), n_bins=0)
    with pytest.raises(TokenscaleError, match=r"dependency\[0\] = 0 is not a dependency length"):
        al.align(tau, v, domain=dom, domain_names=["a"], dependency=np.zeros(50, int), n_boot=20)
    with pytest.raises(TokenscaleError, match="training token id 9 is outside the vocabulary"):
        token_frequencies(np.array([1, 9], np.uint16), 5)
    with pytest.raises(TokenscaleError, match="tau_b has 49 entries, expected 50"):
        seed_agreement(tau, tau[:49], v, v[:49])
    with pytest.raises(TokenscaleError, match="no token instance is valid in both runs"):
        seed_agreement(tau, tau, v, ~v)
    with pytest.raises(TokenscaleError, match="confidence must be in"):
        bs.spearman_ci(tau, tau, confidence=95)
    with pytest.raises(TokenscaleError, match=r"tau\[2\] = nan is not finite at a valid instance"):
        al.align(np.where(np.arange(50) == 2, np.nan, tau), v, domain=dom, domain_names=["a"])


# ----------------------------------------------------------------------------- figures
def test_figures_write_non_empty_png(tmp_path):
    tau, dom, freq, dep = _planted(n=3000)
    valid = np.ones(tau.size, bool)
    t = al.align(tau, valid, domain=dom, domain_names=["docs", "code", "mine"], freq_of_instance=freq,
                 dependency=dep, n_boot=50)
    paths = plot_alignment(t, tmp_path / "a", axis_label="training step")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    t["dependency"] = None  # drawn as "not computed"
    p2 = plot_alignment(t, tmp_path / "b", axis_label="training step")
    assert p2[0].stat().st_size > 1000 and b"not computed" in p2[1].read_bytes()
    b = tau + np.random.default_rng(0).normal(0, 0.1, tau.size)
    s = seed_agreement(tau, b, valid, valid, n_boot=50)
    ps = plot_seed_agreement(tau, b, s, tmp_path / "seeds.png")
    assert ps[0] == tmp_path / "seeds.png" and ps[0].stat().st_size > 1000


def test_dependency_mask_restricts_only_the_dependency_panel():
    rng = np.random.default_rng(3)
    n = 600
    tau = rng.normal(2.0, 0.3, n)
    valid = np.ones(n, bool)
    dom = rng.integers(0, 2, n)
    dep = 2 ** rng.integers(0, 5, n)
    mask = np.arange(n) < 400
    kw = dict(domain=dom, domain_names=["a", "b"], n_boot=50, seed=1)
    masked = al.align(tau, valid, dependency=np.where(mask, dep, 1), dependency_mask=mask, **kw)
    subset = al.align(tau, valid & mask, dependency=dep, **kw)
    assert masked["dependency"] == subset["dependency"]
    assert masked["domain"] == al.align(tau, valid, **kw)["domain"] and masked["n_valid"] == n


def test_seeds_cli_refuses_unpaired_names(tmp_path):
    from conftest import run_cli

    p = run_cli("seeds", "--fits", tmp_path / "a.h5", "--runs", "a", "b", "--tokens", tmp_path / "t.h5",
                "--group", "a", "--out", tmp_path / "o.json", "--figures", tmp_path / "f", check=False)
    assert p.returncode == 2
    assert "need one --fits per --runs name and at least 2 runs, got 1 fit tables for 2 runs" in p.stderr
