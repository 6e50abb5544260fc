"""The native CPU kernel of the fit (:mod:`tokenscale.fit.engines.native`): agreement with the torch engine,
its build cache, and the fallbacks when it cannot be built.  (tests/test_fit.py runs every numerics test with both
engines.)"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from tokenscale import TokenscaleError
from tokenscale.fit.engines import native
from tokenscale.fit import fit_sigmoids
from tokenscale.fit.planted import default_step_axis, planted_trajectories

AXIS = default_step_axis()

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.build_error()}")


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path and no loaded kernel (restored afterwards)."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("TOKENSCALE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TOKENSCALE_NATIVE", raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_and_torch_engines_agree(dtype):
    """Same algorithm, same start: the two implementations reach the same optimum up to round-off."""
    y, _ = planted_trajectories(4000, seed=3)
    y[11, 5] = np.nan
    a = fit_sigmoids(y, AXIS, engine="native", dtype=dtype)
    b = fit_sigmoids(y, AXIS, engine="torch", dtype=dtype)
    assert a.attrs["engine"] == "native" and b.attrs["engine"] == "torch"
    np.testing.assert_array_equal(a.status == 2, b.status == 2)
    assert a.status[11] == 2 and np.isnan(a.tau[11])
    ok = a.status != 2
    rel = np.abs(a.sse[ok] - b.sse[ok]) / np.maximum(b.sse[ok], 1e-12)
    # float32: sums in a different order (vectorised C vs torch) and a polynomial exp; 1e-4 relative SSE
    # is ~100x that round-off, and a handful of ill-conditioned rows may stop at a different point of a flat
    # valley (SSE equal to 1e-3)
    lim = 1e-4 if dtype == torch.float32 else 1e-9
    assert np.mean(rel <= lim) >= 0.995
    assert np.max(rel) < 1e-3
    assert np.median(np.abs(a.tau - b.tau)[ok]) < (1e-5 if dtype == torch.float32 else 1e-10)
    assert np.mean(a.category == b.category) >= 0.998
    assert np.mean(a.status == b.status) >= 0.995


def test_native_results_do_not_depend_on_chunks_or_threads():
    y, _ = planted_trajectories(2000, seed=5)
    ref = fit_sigmoids(y, AXIS, engine="native", workers=1)
    for kw in ({"chunk_size": 7, "workers": 2}, {"chunk_size": 333}, {"block_size": 100, "workers": 2}):
        other = fit_sigmoids(y, AXIS, engine="native", **kw)
        for name in ("tau", "lam", "delta", "post", "sse", "status", "n_iter", "category"):
            np.testing.assert_array_equal(getattr(other, name), getattr(ref, name), err_msg=f"{name} {kw}")


def test_engine_option_is_validated():
    y, _ = planted_trajectories(10, seed=0)
    with pytest.raises(TokenscaleError, match=r"engine must be one of .*'gpu'"):
        fit_sigmoids(y, AXIS, engine="gpu")
    with pytest.raises(TokenscaleError, match=r"engine='native' runs on CPU only, got device 'meta'"):
        fit_sigmoids(y, AXIS, engine="native", device="meta")


def test_kernel_is_built_once_into_the_cache_and_reused(fresh_native):
    assert native.available()
    libs = sorted(fresh_native.glob("fit_lm-*.so"))
    assert len(libs) == 1 and not list(fresh_native.glob("*.tmp"))
    mtime = libs[0].stat().st_mtime_ns
    native._state.clear()
    assert native.available()  # loads the cached build, no recompilation
    assert libs[0].stat().st_mtime_ns == mtime and len(list(fresh_native.glob("fit_lm-*"))) == 1


def test_without_a_compiler_auto_falls_back_to_torch_and_native_is_refused(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    from tokenscale.fit import api as fit_mod

    monkeypatch.setattr(fit_mod, "_ENGINE_WARNED", [])
    y, _ = planted_trajectories(200, seed=1)
    assert not native.available()
    assert "no C compiler (/nonexistent/cc not found on PATH)" in native.build_error()
    with pytest.raises(TokenscaleError, match=r"engine='native' requested but no C compiler"):
        fit_sigmoids(y, AXIS, engine="native")
    with pytest.warns(RuntimeWarning, match="using the \\(slower\\) torch engine"):
        fb = fit_sigmoids(y, AXIS)
    assert fb.attrs["engine"] == "torch"
    ref = fit_sigmoids(y, AXIS, engine="torch")
    np.testing.assert_array_equal(fb.tau, ref.tau)


def test_a_compiler_error_is_reported_in_one_line(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "cc -Werror=this-flag-does-not-exist")
    assert not native.available()
    msg = native.build_error()
    assert msg.startswith("cannot build the native fit kernel:") and "\n" not in msg
    assert "this-flag-does-not-exist" in msg
    assert not list(fresh_native.glob("*.tmp"))  # no half-written library left behind


def test_tokenscale_native_0_disables_the_kernel(fresh_native, monkeypatch):
    monkeypatch.setenv("TOKENSCALE_NATIVE", "0")
    assert not native.available()
    assert native.build_error() == "disabled by TOKENSCALE_NATIVE=0"
    assert not fresh_native.exists()  # nothing was built


def test_kernel_wrappers_reject_mismatched_buffers():
    Y = torch.zeros((4, 8), dtype=torch.float32)
    bufs = dict(Yc=torch.empty((4, 8)), ybar=torch.empty(4), sst=torch.empty(4), rng=torch.empty(4),
                valid=torch.empty(4, dtype=torch.int8))
    with pytest.raises(TokenscaleError, match=r"'valid' must be a contiguous torch.int8 CPU tensor"):
        native.prep(Y, **{**bufs, "valid": torch.empty(4, dtype=torch.int32)})
    with pytest.raises(TokenscaleError, match="buffers do not match rows of shape"):
        native.prep(Y, **{**bufs, "ybar": torch.empty(3)})
    native.prep(Y, **bufs)
    assert bufs["valid"].tolist() == [1, 1, 1, 1] and bufs["sst"].tolist() == [0, 0, 0, 0]
    assert os.environ.get("TOKENSCALE_NATIVE", "1") != "0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_sigmoids(np.ones((3, 8)), np.arange(1, 9), engine="native")  # flat rows: no warning, no crash
