"""tokenscale.seeds.stage (the seeds command's driver): every pair of runs gets its agreement, the first run
against each other gets a figure, and fit tables that cannot be compared are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.data import write_token_set
from tokenscale.io.fits import SigmoidFit, save_fits
from tokenscale.seeds.stage import run_seeds

S, T = 30, 8
N = S * T


def _fits(path, tau, transform="log10"):
    n = tau.size
    axis = np.linspace(1.0, 4.0, 8)
    cols = {"tau": tau, "tau_orig": 10.0 ** tau, "lam": np.full(n, 3.0), "delta": np.full(n, 1.0),
            "post": np.full(n, 2.0), "pre": np.full(n, 3.0), "sse": np.full(n, 1e-3), "r2": np.full(n, 0.99),
            "status": np.zeros(n, np.int8), "category": np.ones(n, np.int8), "n_iter": np.full(n, 5, np.int32)}
    save_fits(path, SigmoidFit(axis=axis, axis_orig=10.0 ** axis, transform=transform, **cols))
    return path


def _study(tmp_path):
    """Runs a and b learn the tokens in the same order (b = a + small noise); run c in an unrelated order."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=(S, T + 1))
    write_token_set(tmp_path / "valid.h5", ids, np.broadcast_to(np.arange(S)[:, None], (S, T)),
                    np.broadcast_to(np.arange(T)[None, :], (S, T)), np.zeros((S, T), np.int16), kind="validation",
                    domain_names=["web"])
    a = rng.uniform(1.5, 3.5, N)
    return [_fits(tmp_path / "a.h5", a), _fits(tmp_path / "b.h5", a + rng.normal(0, 0.01, N)),
            _fits(tmp_path / "c.h5", rng.uniform(1.5, 3.5, N))]


def _run(tmp_path, fits, runs):
    return run_seeds(fits=fits, runs=runs, tokens=tmp_path / "valid.h5", options={"n_boot": 50}, group="g",
                     out=tmp_path / "agreement.json", figures=tmp_path / "fig")


def test_every_pair_is_compared_and_the_reference_pairs_are_drawn(tmp_path):
    table = _run(tmp_path, _study(tmp_path), ["a", "b", "c"])
    assert json.loads((tmp_path / "agreement.json").read_text()) == table
    assert table["group"] == "g" and table["runs"] == ["a", "b", "c"] and table["transform"] == "log10"
    pairs = {(p["run_a"], p["run_b"]): p for p in table["pairs"]}
    assert list(pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs["a", "b"]["n"] == N and pairs["a", "b"]["spearman"]["rho"] > 0.99
    assert abs(pairs["a", "c"]["spearman"]["rho"]) < 0.2
    assert pairs["a", "b"]["median_abs_diff"] < 0.05 < pairs["a", "c"]["median_abs_diff"]
    assert 0.5 < pairs["a", "b"]["tau_iqr"] < 1.5  # IQR of U(1.5, 3.5) is 1
    drawn = {p.stem for p in (tmp_path / "fig").iterdir()}
    assert drawn == {"fig02_seeds_b", "fig02_seeds_c"}


def test_unpaired_names_and_mixed_transforms_are_refused(tmp_path):
    fits = _study(tmp_path)
    with pytest.raises(TokenscaleError, match="need one --fits per --runs name and at least 2 runs"):
        _run(tmp_path, fits[:2], ["a", "b", "c"])
    with pytest.raises(TokenscaleError, match="at least 2 runs"):
        _run(tmp_path, fits[:1], ["a"])
    linear = _fits(tmp_path / "lin.h5", np.full(N, 2.0), transform="linear")
    with pytest.raises(TokenscaleError, match="different axis transforms"):
        _run(tmp_path, [fits[0], linear], ["a", "lin"])
