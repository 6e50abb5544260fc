"""tokenscale.forecast: the planted known answer (a known spectrum and pulses: β recovered, the true curve inside the
band, the power law beaten), a mutant (a wrong β leaves the band), the refit of partial tokens, the bad inputs (a
cut leaving < 4 points, no tail fit) as one line, and the command on a planted series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.fit.planted import default_step_axis, planted_trajectories
from tokenscale.forecast import compute
from tokenscale.forecast.stage import at_cut, fit_prefix, forecast_from


@pytest.fixture(scope="module")
def planted():
    a = default_step_axis(32, 10, 1e5)
    L, truth = planted_trajectories(20000, a, seed=0, alpha=2.0, noise=(0.05, 0.1), frac_ascending=0.0,
                                    lam_range=(4, 20))
    return {"losses": L, "a": a, "x": np.log10(a), "transform": "log10", "fit": None}, truth


@pytest.fixture(scope="module")
def backtest(planted):
    return at_cut(planted[0], 0.55, series="planted", n_boot=100, seed=0)


def test_planted_forecast_recovers_the_true_curve_within_its_band(backtest):
    r = backtest
    assert abs(r["beta"] - 2.0) < 0.1  # the planted density a^-2
    assert np.all((r["truth"] >= r["lo"]) & (r["truth"] <= r["hi"]))
    assert r["errors"]["spectrum"]["coverage"] == 1.0
    assert r["errors"]["spectrum"]["max_rel_err"] < 0.01
    assert r["errors"]["spectrum"]["max_rel_err"] < 0.5 * r["errors"]["power_law"]["max_rel_err"]


def test_a_wrong_beta_leaves_the_band(planted):
    s = planted[0]
    k = compute.cut_points(s["x"], 0.4)  # earlier than the backtest's cut: the tail still matters there
    fit = fit_prefix(s["losses"][:, :k], s["a"][:k], "log10")
    truth = s["losses"][:, k:].mean(0, dtype=np.float64)

    def coverage(beta):
        r = compute.forecast_mean(s["losses"][:, :k], s["x"][:k], s["x"][k:], fit, "log10", beta=beta, beta_se=0.02,
                                  n_boot=50, seed=0)
        return np.mean((truth >= r["lo"]) & (truth <= r["hi"]))

    assert coverage(2.0) == 1.0
    assert coverage(1.2) < 0.5 and coverage(3.0) < 0.5


def test_refit_partial_recovers_a_planted_half_descent():
    x = np.linspace(0, 1, 8)
    tau, lam, delta, post = 0.9, 6.0, 2.0, 1.0
    L = (post + delta / (1 + np.exp(lam * (x - tau))))[None, :]
    r = compute.refit_partial(L, x, lam, np.array([delta]))
    assert r["tau"][0] == pytest.approx(tau, abs=0.02)
    assert r["delta"][0] == pytest.approx(delta, rel=0.05)
    assert r["post"][0] == pytest.approx(post, abs=0.05)


def test_a_cut_leaving_fewer_than_4_points_is_one_line():
    x = np.log10(default_step_axis(16, 10, 1e4))
    with pytest.raises(TokenscaleError, match=r"t_moe: a cut at 0.1 of the axis span leaves 2 points"):
        compute.cut_points(x, 0.1, "t_moe")
    assert compute.cut_points(x, None) == 16


def test_no_tail_fit_is_one_line(planted):
    s = planted[0]
    n = s["losses"].shape[0]
    flat = {"tau": np.full(n, np.nan), "lam": np.full(n, np.nan), "delta": np.zeros(n), "post": np.ones(n),
            "r2": np.zeros(n), "status": np.full(n, 2, np.int8)}
    with pytest.raises(TokenscaleError, match=r"flat: the spectrum of the first 8 points has no tail fit"):
        forecast_from(s, 8, s["x"][8:], flat, series="flat", n_boot=0, seed=0)


def test_forecast_command_on_a_planted_series(tmp_path, planted):
    from tokenscale.cli.app import main
    from tokenscale.fit.api import fit_sigmoids
    from tokenscale.io.fits import save_fits

    s = planted[0]
    L, a = s["losses"][:4000], np.round(s["a"]).astype(np.int64).astype(float)  # checkpoints are whole steps
    traj = tmp_path / "shard-000.h5"
    _write_shard(traj, L, a)
    save_fits(tmp_path / "fits.h5", fit_sigmoids(L, a, transform="log10"))
    out = tmp_path / "f" / "forecast.json"
    rc = main(["forecast", "--trajectories", str(traj), "--fits", str(tmp_path / "fits.h5"), "--series", "p",
               "--options", json.dumps({"n_boot": 20, "forecast_cut": None}), "--out", str(out),
               "--figure", str(tmp_path / "f" / "forecast.png")])
    assert rc == 0
    r = json.loads(out.read_text())
    assert len(r["forecast"]) == 16 and r["axis"][-1] == pytest.approx(4 * a[-1])
    assert all(lo <= m <= hi for lo, m, hi in zip(r["lo"], r["forecast"], r["hi"]))
    assert (tmp_path / "f" / "forecast.png").exists()


def _write_shard(path, L: np.ndarray, a: np.ndarray) -> None:
    """A minimal trajectory shard (the datasets the reader requires; no checksum stored)."""
    import h5py

    n = L.shape[0]
    with h5py.File(path, "w") as f:
        f["loss"] = np.maximum(L, 0.0).astype(np.float32)
        f["axis/step"] = a.astype(np.int64)
        f["axis/tokens"] = a.astype(np.int64) * 2048
        f["token_index"] = np.arange(n)
        for m in ("doc_id", "doc_pos", "domain", "token_id"):
            f[f"meta/{m}"] = np.zeros(n, np.int64)
