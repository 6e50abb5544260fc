"""Reshaping (paper §6): scores and buckets on a planted τ table, sampler weights reaching the data order (χ²), the
metrics on planted curves, the config's arms and bad inputs, and continuations from the reference's full state."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import chisquare

from tokenscale import TokenscaleError
from tokenscale.reshaping import compute as rs
from tokenscale.config import run_configs, validate_config
from tokenscale.training import sampler
from tokenscale.training.sampler import WeightedSampler
from tokenscale.training.trainer import Trainer

from conftest import tiny_config

T = 8


# ------------------------------------------------------------------------------------------ scores and buckets
def planted_table(S=60, seed=0):
    """S samples of T tokens; sample s has k_s = s % (T + 1) selected tokens with τ inside the window [2, 3],
    the rest selected outside it, plus one unselected (noise) token inside the window that must not count."""
    rng = np.random.default_rng(seed)
    k = np.arange(S) % (T + 1)
    tau, valid = np.empty((S, T)), np.ones((S, T), bool)
    for s in range(S):
        tau[s] = rng.choice([rng.uniform(1, 1.99), rng.uniform(3.01, 4)], size=T)
        tau[s, : k[s]] = rng.uniform(2, 3, size=k[s])
        if k[s] < T:
            tau[s, k[s]], valid[s, k[s]] = 2.5, False  # a noise row in the window
    return tau.reshape(-1), valid.reshape(-1), k


def test_scores_are_the_fraction_of_selected_tokens_in_the_window():
    tau, valid, k = planted_table()
    score, n = rs.score_samples(tau, valid, T, (2.0, 3.0))
    np.testing.assert_array_equal(n, k)
    np.testing.assert_allclose(score, k / T)
    # window edges are inclusive
    s2, _ = rs.score_samples(np.array([2.0, 3.0, 3.0001, 1.9999]), np.ones(4, bool), 4, (2.0, 3.0))
    assert s2.tolist() == [0.5]


def test_buckets_follow_the_rank_with_equal_counts():
    tau, valid, k = planted_table(S=90)
    score, _ = rs.score_samples(tau, valid, T, (2.0, 3.0))
    b = rs.assign_buckets(score, 9, seed=3)
    assert np.bincount(b).tolist() == [10] * 9
    # every k value occurs 10 times: bucket b holds exactly the samples with k = b
    np.testing.assert_array_equal(b, k)
    # ties are broken in a seeded random order, sizes still equal (differ by at most one)
    ties = rs.assign_buckets(np.zeros(23), 4, seed=1)
    assert sorted(np.bincount(ties).tolist()) == [5, 6, 6, 6]
    assert np.array_equal(ties, rs.assign_buckets(np.zeros(23), 4, seed=1))
    assert not np.array_equal(ties, rs.assign_buckets(np.zeros(23), 4, seed=2))
    with pytest.raises(TokenscaleError, match=r"3 candidate samples for 4 buckets"):
        rs.assign_buckets(np.zeros(3), 4)


def test_bucket_weights_ramp_list_and_bad_weights():
    np.testing.assert_allclose(rs.bucket_weights({"ramp": [0.5, 1.5]}, 3), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(rs.bucket_weights([1, 0, 2], 3), [1, 0, 2])
    with pytest.raises(TokenscaleError, match=r"weights has 2 entries for 3 buckets"):
        rs.bucket_weights([1, 2], 3)
    with pytest.raises(TokenscaleError, match=r"must be finite and non-negative"):
        rs.bucket_weights({"ramp": [-1, 1]}, 3)
    with pytest.raises(TokenscaleError, match=r"give a zero total weight"):
        rs.bucket_weights([0, 0, 0], 3)


def test_sampler_weights_reach_the_data_order():
    """Draws of the reshaped arm's sampler: bucket frequencies match the weights (χ²), zero outside the pool."""
    n_train, B = 5000, 5
    rng = np.random.default_rng(0)
    pool = np.sort(rng.choice(n_train, 400, replace=False))
    bucket = rs.assign_buckets(rng.random(400), B, seed=0)
    wb = rs.bucket_weights({"ramp": [0.2, 1.8]}, B)
    w = rs.pool_weights(n_train, pool, rs.sample_weights(bucket, wb))
    draws = WeightedSampler(w, seed=4).indices(1600 * 16, 20000)  # a continuation's positions
    assert np.isin(draws, pool).all()
    bucket_of = dict(zip(pool.tolist(), bucket.tolist()))
    observed = np.bincount([bucket_of[d] for d in draws.tolist()], minlength=B)
    share = np.array([wb[b] * (bucket == b).sum() for b in range(B)])
    assert chisquare(observed, share / share.sum() * observed.sum()).pvalue > 1e-3
    assert chisquare(observed, np.full(B, observed.sum() / B)).pvalue < 1e-6  # not the uniform pool
    with pytest.raises(TokenscaleError, match=r"sample index outside \[0, 10\)"):
        rs.pool_weights(10, np.array([3, 10]), np.ones(2))


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_on_planted_curves():
    steps = np.array([401, 430, 460, 490, 520, 550])
    lin = np.linspace(0, 1, 6)
    reshaped = np.stack([5 - (0.33 + e) * lin for e in (0, 0.01, -0.01)])  # seeds differ in their drop
    uniform = np.stack([5 - (0.30 + e) * lin for e in (0, 0.004, -0.004)])
    m = rs.arm_metrics(steps, {"reshaped": reshaped, "uniform": uniform}, n_boot=300)
    assert m["acceleration_vs_uniform"]["value"] == pytest.approx(0.1)
    assert m["acceleration_vs_uniform"]["ci_low"] < 0.1 < m["acceleration_vs_uniform"]["ci_high"]
    assert m["final_reshaped"]["value"] == pytest.approx(4.67)
    # the control never gets to 4.67 within the window: censored, "> window"
    assert m["steps_to_reach_vs_uniform"]["censored"] and m["steps_to_reach_vs_uniform"]["value"] is None
    # a slower reshaped arm: the control reaches its final loss (4.8) two thirds of the way from 490 to 520 = step 500
    m2 = rs.arm_metrics(steps, {"reshaped": 5 - 0.2 * lin[None], "uniform": 5 - 0.3 * lin[None]}, n_boot=10)
    assert m2["steps_to_reach_vs_uniform"]["value"] == pytest.approx((500 - 401) / (550 - 401))
    assert m2["acceleration_vs_uniform"]["value"] == pytest.approx(-1 / 3)
    with pytest.raises(TokenscaleError, match=r"no curves for arm 'uniform'"):
        rs.arm_metrics(steps, {"reshaped": reshaped})


def test_acceleration_ci_covers_at_its_level_with_three_seeds():
    """Fieller's interval over 3 + 3 seeds covers the planted acceleration near its 95% level (a percentile
    bootstrap over seeds covered 80% in the same setting); a control whose drop is not above zero gives no bounds."""
    steps = np.array([401, 475, 550])
    rng = np.random.default_rng(0)
    hits, n = 0, 300
    for _ in range(n):
        dr, dc = rng.normal(0.33, 0.03, 3), rng.normal(0.30, 0.03, 3)  # per-seed drops; truth: 0.33/0.30 - 1 = 0.1
        curves = {a: np.stack([5 - d * np.array([0.0, 0.5, 1.0]) for d in ds]) for a, ds in (("reshaped", dr),
                                                                                                 ("uniform", dc))}
        m = rs.arm_metrics(steps, curves, n_boot=200, seed=int(rng.integers(1 << 30)))["acceleration_vs_uniform"]
        assert m["ci_method"] == "fieller"
        hits += m["ci_low"] is not None and m["ci_low"] <= 0.1 <= m["ci_high"]
    assert 0.9 <= hits / n <= 0.995
    flat = {"reshaped": np.stack([5 - d * np.array([0.0, 0.5, 1.0]) for d in (0.3, 0.31, 0.29)]),
            "uniform": np.stack([5 - d * np.array([0.0, 0.5, 1.0]) for d in (0.02, -0.03, 0.01)])}
    m = rs.arm_metrics(steps, flat, n_boot=50)["acceleration_vs_uniform"]
    assert m["ci_low"] is None and m["ci_high"] is None


# ------------------------------------------------------------------------------------------ config
def reshape_config(**ex) -> dict:
    """The tiny T run (40 steps, constant lr) as a reference, and a reshape experiment over steps 20-30."""
    cfg = tiny_config(name="ref", schedule={"kind": "constant", "warmup_frac": 0.1},
                      checkpoints={"count": 12, "first_step": 2})
    cfg["reshape"] = [{"name": "rs", "reference": "ref", "window": [20, 30], "candidates": 12, "buckets": 3,
                       "seeds": [0, 1], "checkpoints": 3, **ex}]
    return cfg


def test_config_adds_the_arms_and_the_snapshot():
    v = validate_config(reshape_config())
    runs = {r["name"]: r for r in v["runs"]}
    assert sorted(n for n in runs if n.startswith("rs-")) == [
        "rs-original", "rs-reshaped-s0", "rs-reshaped-s1", "rs-uniform-s0", "rs-uniform-s1"]
    assert runs["ref"]["snapshots"] == [20]
    arm = run_configs(v)["rs-reshaped-s1"]
    assert arm.branch == {"from": "ref", "step": 20} and arm.total_steps == 30 and arm.seed == 0
    assert arm.reshape == {"experiment": "rs", "arm": "reshaped", "data_seed": 1}
    assert arm.schedule["warmup_steps"] == 4 and arm.checkpoint_steps()[-1] == 30
    from tokenscale.series import build_workflow

    wf = build_workflow({**v, "results": "/r"})
    arms = ["rs-original", "rs-reshaped-s0", "rs-reshaped-s1", "rs-uniform-s0", "rs-uniform-s1"]
    assert sorted(wf.series) == ["ref", "rs-candidates", *arms]
    cand = wf.series["rs-candidates"]
    assert cand.token_set == "rs" and [s for _, s in cand.members] == [s for s in wf.sources["ref"].steps if s >= 2]
    # each arm's continuation series: the reference's checkpoints up to the window start, then the arm's own
    cont = wf.series["rs-uniform-s1"]
    assert cont.kind == "continuation" and cont.token_set == "valid" and cont.sources == ("ref", "rs-uniform-s1")
    assert cont.members == tuple(("ref", s) for s in wf.sources["ref"].steps if s <= 20) + tuple(
        ("rs-uniform-s1", s) for s in arm.checkpoint_steps())
    assert all(s > 20 for s in arm.checkpoint_steps())


# ------------------------------------------------------------------------------------------ spectrum shift (step 6)
def _planted_arms(shift: float, n_seeds=3, N=4000, seed=0):
    """Uniform-arm τ (log10 step) spread over [1.5, 3]; the reshaped arm's τ = the uniform arm's + ``shift`` + noise;
    10% of tokens unselected (NaN) in each arm."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.5, 3.0, N)
    arms = {"reshaped": [], "uniform": []}
    for _ in range(n_seeds):
        for arm, d in (("uniform", 0.0), ("reshaped", shift)):
            x = base + d + rng.normal(0, 0.03, N)
            x[rng.random(N) < 0.1] = np.nan
            arms[arm].append(x)
    return {a: np.stack(v) for a, v in arms.items()}


def test_spectrum_shift_recovers_a_planted_shift_and_is_null_for_exchangeable_arms():
    window = (np.log10(400), np.log10(550))
    s = rs.spectrum_shift(_planted_arms(-0.02), window)
    sh = s["shift"]["uniform"]
    assert sh["value"] == pytest.approx(-0.02, abs=0.003) and sh["ci_low"] <= sh["value"] <= sh["ci_high"]
    assert len(sh["per_pair"]) == 3 and min(sh["tokens_per_pair"]) > 100
    # the window fraction: tokens within [x_a, x_b]; shifted earlier → the window picks up a slice from its end
    f = s["window_fraction"]
    assert f["uniform"]["value"] == pytest.approx(0.9 * (window[1] - window[0]) / 1.5, rel=0.1)
    # exchangeable arms: no shift, and the seed CI covers 0 at about its nominal rate
    nulls = [rs.spectrum_shift(_planted_arms(0.0, seed=k), window)["shift"]["uniform"] for k in range(1, 41)]
    assert abs(np.mean([n["value"] for n in nulls])) < 0.001
    assert sum(n["ci_low"] <= 0 <= n["ci_high"] for n in nulls) >= 34
    # one original-arm seed is paired with every reshaped seed
    X = _planted_arms(0.0, seed=2)
    o = rs.spectrum_shift({**X, "original": X["uniform"][:1]}, window)
    assert len(o["shift"]["original"]["per_pair"]) == 3
    assert o["window_fraction"]["reshaped_minus_original"]["ci_low"] is None  # one original seed: no Welch interval
    with pytest.raises(TokenscaleError, match=r"no continuation fits for arm 'reshaped'"):
        rs.spectrum_shift({"uniform": X["uniform"]}, window)
    with pytest.raises(TokenscaleError, match=r"cover different token counts \[4000, 10\]"):
        rs.spectrum_shift({"reshaped": X["reshaped"], "uniform": X["uniform"][:, :10]}, window)


@pytest.mark.parametrize("change, message", [
    ({"window": [30, 50]}, r"window \[30, 50\] is not within the reference's steps 1\.\.40"),
    ({"window": [30, 20]}, r"window \[30, 20\] is not within"),
    ({"candidates": 2}, r"2 candidate samples for 3 buckets"),
    ({"weights": [0, 0, 0]}, r"bucket weights \[0.0, 0.0, 0.0\] give a zero total weight"),
    ({"weights": [1, -1, 1]}, r"bucket weights \[1.0, -1.0, 1.0\] must be finite and non-negative"),
    ({"reference": "nope"}, r"reference 'nope' is not a T run of this config"),
    ({"candidate_from_step": 25}, r"candidate_from_step 25 leaves \d+ reference checkpoints"),
    ({"candidate_to_step": 7}, r"candidate_from_step 2 to candidate_to_step 7 leaves 4 reference checkpoints"),
    ({"max_draws_per_sample": 1.2}, r"12 candidates give 7\.11 draws per drawn sample over the window's 80 draws "
                                    r"\(max_draws_per_sample 1\.2\): need candidates >= 285$"),
])
def test_bad_experiments_are_one_line(change, message):
    with pytest.raises(TokenscaleError, match=r"^config: reshape\[0\] \(rs\): " + message):
        validate_config(reshape_config(**change))


def test_pool_sizing_known_answers_and_the_sampler_agree():
    """Draws per distinct drawn sample: the hand formula for a uniform pool, the sampler's own draws (Monte Carlo)
    for the ramp-weighted pool, Kish's size, and the smallest pool meeting a limit (one fewer does not)."""
    from tokenscale.reshaping import spec

    assert spec.draws_per_sample(np.ones(1000), 2400) == pytest.approx(2400 / (1000 * (1 - 0.999 ** 2400)))  # 2.64
    assert spec.draws_per_sample(np.ones(10**6), 10) == pytest.approx(1.0, abs=1e-4)
    wb = np.linspace(0.25, 1.75, 10)
    w = spec.pool_sample_weights(3000, wb)
    assert np.unique(w, return_counts=True)[1].tolist() == [300] * 10  # equal-count buckets
    assert spec.effective_size(np.ones(700)) == pytest.approx(700)
    assert spec.effective_size(w) == pytest.approx(3000 / np.mean(wb ** 2))  # mean weight 1: S / E[w²]
    expected = spec.draws_per_sample(w, 2400)
    got = [2400 / np.unique(WeightedSampler(w, seed).indices(0, 2400)).size for seed in range(40)]
    assert np.mean(got) == pytest.approx(expected, rel=0.01) and expected > spec.draws_per_sample(np.ones(3000), 2400)
    n = spec.pool_size_needed(wb, 2400, 1.2)
    assert spec.draws_per_sample(spec.pool_sample_weights(n, wb), 2400) <= 1.2
    assert spec.draws_per_sample(spec.pool_sample_weights(n - 1, wb), 2400) > 1.2
    assert spec.pool_size_needed(np.ones(4), 2400, 1.2) < n  # a flat pool needs fewer samples
    v = validate_config(reshape_config(candidates=300, max_draws_per_sample=1.2, candidate_to_step=30))
    assert v["reshape"][0]["candidates"] == 300
    cand = run_configs(v)["ref"]
    from tokenscale.reshaping.spec import candidate_steps

    assert candidate_steps(cand, v["reshape"][0]) == [s for s in cand.checkpoint_steps() if 2 <= s <= 30]


def test_train_val_gap_and_pool_summary_on_planted_arms(tmp_path):
    """The gap is each seed's mean training loss over the last steps minus its final validation loss; the pool
    summary counts the pool, its Kish size and the measured draws per sample over the arm's seeds."""
    train = {"uniform": [np.r_[np.full(8, 5.0), 4.0, 4.2], np.r_[np.full(8, 5.0), 4.4, 4.6]]}
    curves = {"uniform": np.array([[5.0, 4.9], [5.0, 4.8]])}
    g = rs._train_val_gap(train, curves, width=2)["uniform"]
    assert g["per_seed"] == pytest.approx([4.1 - 4.9, 4.5 - 4.8]) and g["value"] == pytest.approx(-0.55)
    assert g["ci_low"] < g["value"] < g["ci_high"]
    np.save(tmp_path / "w.npy", rs.pool_weights(50, np.arange(10, 30), np.ones(20)))
    arms = [{"run": f"u{k}", "arm": "uniform", "weights": tmp_path / "w.npy"} for k in (0, 1)] + [
        {"run": "o", "arm": "original"}]
    rep = {"u0": {"draws": 40, "mean_draws_per_sample": 2.0}, "u1": {"draws": 40, "mean_draws_per_sample": 2.5}}
    p = rs._pool_summary(arms, rep)
    assert list(p) == ["uniform"] and p["uniform"]["pool_size"] == 20 and p["uniform"]["draws_per_pool_sample"] == 2.0
    assert p["uniform"]["effective_size"] == pytest.approx(20) and p["uniform"]["mean_draws_per_sample"] == 2.25


# ------------------------------------------------------------------------------------------ continuations
def _pool(data_dir) -> np.ndarray:
    """Uniform sampler weights over the first 12 training samples."""
    from tokenscale.data import TrainTokens

    return rs.pool_weights(len(TrainTokens(data_dir)), np.arange(12), np.ones(12))


def _train(run, data_dir, run_dir, weights=None):
    return Trainer(run, data_dir, run_dir, threads=1, progress=False, sampler_weights=weights).train()


@pytest.fixture(scope="module")
def arms(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("reshape")
    rc = run_configs(validate_config(reshape_config()))
    _train(rc["ref"], data_dir, root / "ref")
    return root, rc


def test_fieller_known_answer_with_unequal_variances():
    """Drops 0.30/0.36/0.42 (reshaped, s = 0.06) against 0.28/0.30/0.32 (uniform, s = 0.02: a third): the interval
    is the root pair of the hand-written quadratic (b² − q²·v_c)ρ² − 2ab·ρ + (a² − q²·v_r) = 0 with v = s²/n per arm
    (v_r = 0.0036/3, v_c = 0.0004/3) and q = t_0.975 at the Welch–Satterthwaite df, minus 1. Dropping a /n or
    swapping the arms' variances moves both ends by more than the tolerance."""
    from scipy.stats import t

    steps = np.array([401, 475, 550])
    curves = {a: np.stack([5 - d * np.array([0.0, 0.5, 1.0]) for d in ds])
              for a, ds in (("reshaped", (0.30, 0.36, 0.42)), ("uniform", (0.28, 0.30, 0.32)))}
    m = rs.arm_metrics(steps, curves, n_boot=20)["acceleration_vs_uniform"]
    a, b, v_r, v_c = 0.36, 0.30, 0.0036 / 3, 0.0004 / 3
    rho = a / b  # 1.2
    df = (v_r + rho**2 * v_c) ** 2 / (v_r**2 / 2 + (rho**2 * v_c) ** 2 / 2)  # 2.624
    q = t.ppf(0.975, df)
    lo, hi = sorted(np.roots([b * b - q * q * v_c, -2 * a * b, a * a - q * q * v_r]).real)
    assert df == pytest.approx(2.62403, abs=1e-4)
    assert m["value"] == pytest.approx(0.2) and m["ci_method"] == "fieller"
    assert m["ci_low"] == pytest.approx(lo - 1, abs=1e-9) and m["ci_high"] == pytest.approx(hi - 1, abs=1e-9)
    assert lo - 1 < 0.2 < hi - 1 and hi - lo > 0.3  # the reshaped arm's spread dominates: a wide interval


def test_original_arm_equals_the_reference_bit_for_bit(arms, data_dir):
    root, rc = arms
    out = _train(rc["rs-original"], data_dir, root / "rs-original")
    assert out["checkpoints"] == rc["rs-original"].checkpoint_steps() == [21, 25, 30]
    assert 30 in rc["ref"].checkpoint_steps()  # a step both saved: the weights are compared there
    for s in out["checkpoints"]:
        a = load_file(str(root / "rs-original" / "checkpoints" / f"step{s:08d}" / "model.safetensors"))
        ref_ck = root / "ref" / "checkpoints" / f"step{s:08d}"
        if ref_ck.is_dir():
            b = load_file(str(ref_ck / "model.safetensors"))
            assert all(torch.equal(a[k], b[k]) for k in a), s
    rows = [json.loads(x) for x in (root / "rs-original" / "log.jsonl").read_text().splitlines()]
    ref = {r["step"]: r for r in map(json.loads, (root / "ref" / "log.jsonl").read_text().splitlines())}
    assert [r["step"] for r in rows] == list(range(21, 31))
    assert all(r["loss"] == ref[r["step"]]["loss"] and r["lr"] == ref[r["step"]]["lr"] for r in rows)  # no re-warmup


def test_pool_arm_continues_the_full_state_with_its_own_data(arms, data_dir, tmp_path, monkeypatch):
    root, rc = arms
    np.save(tmp_path / "w.npy", _pool(data_dir))
    run = rc["rs-uniform-s1"]  # data seed 1: not the reference's (0), so a draw with the wrong seed is seen
    with pytest.raises(TokenscaleError, match=r"reshape arm 'uniform' needs --sampler-weights"):
        _train(run, data_dir, root / "no-weights")
    drawn = []  # every index any sampler hands the trainer: an arm that ignored its weights would draw outside
    for cls in (sampler.PermutationSampler, sampler.WeightedSampler):
        def record(self, start, count, _orig=cls.indices):
            out = _orig(self, start, count)
            drawn.append(np.asarray(out).copy())
            return out
        monkeypatch.setattr(cls, "indices", record)
    _train(run, data_dir, root / run.name, weights=tmp_path / "w.npy")
    monkeypatch.undo()
    drawn = np.concatenate(drawn)
    assert drawn.size >= 10 * run.batch_size and set(drawn.tolist()) <= set(range(12))  # every draw in the pool
    # and exactly the draws the report counts (its own data-order seed, not the reference's, from position s_a·G)
    s_a, G = run.branch["step"], run.batch_size
    assert run.reshape["data_seed"] == 1 != rc["ref"].seed
    np.testing.assert_array_equal(drawn[-10 * G:], rs.pool_draws(tmp_path / "w.npy", run.reshape["data_seed"], s_a * G, 10 * G))
    rows = [json.loads(x) for x in (root / run.name / "log.jsonl").read_text().splitlines()]
    ref = {r["step"]: r for r in map(json.loads, (root / "ref" / "log.jsonl").read_text().splitlines())}
    assert rows[0]["step"] == 21 and rows[0]["lr"] == ref[21]["lr"]  # the schedule continues
    assert any(r["loss"] != ref[r["step"]]["loss"] for r in rows)  # another data order


def test_reference_without_the_snapshot_is_one_line(data_dir, tmp_path):
    rc = run_configs(validate_config(reshape_config()))
    np.save(tmp_path / "w.npy", _pool(data_dir))
    with pytest.raises(TokenscaleError, match=r"^run rs-reshaped-s0: branch snapshot not found: .*/ref/snapshots/"
                                              r"step00000020"):
        _train(rc["rs-reshaped-s0"], data_dir, tmp_path / "rs-reshaped-s0", weights=tmp_path / "w.npy")
