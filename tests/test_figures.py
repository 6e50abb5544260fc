"""tokenscale.analysis.figures produces every decomposition figure as non-empty PNG + SVG on a planted run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale import analysis as spectrum
from tokenscale.analysis import figures


@dataclass
class _Fit:
    tau: np.ndarray
    tau_orig: np.ndarray
    lam: np.ndarray
    delta: np.ndarray
    post: np.ndarray
    status: np.ndarray
    category: np.ndarray
    axis: np.ndarray
    axis_orig: np.ndarray
    r2: np.ndarray | None = None
    transform: str = "log10"


def _planted(n=1500, K=41, beta=1.5, seed=0):
    rng = np.random.default_rng(seed)
    a = np.geomspace(10.0, 1e5, K)
    x = np.log10(a)
    tau_o = 10**0.7 * (1 - rng.random(n)) ** (-1 / (beta - 1))  # some τ before the window
    tau = np.log10(tau_o)
    lam = 10 * np.exp(0.15 * rng.standard_normal(n))
    de = 2 * (1 + 0.1 * rng.standard_normal(n))
    post = 0.5 + 0.2 * rng.random(n)
    L = post[:, None] + de[:, None] / (1 + np.exp(lam[:, None] * (x - tau[:, None])))
    L += 0.05 * rng.standard_normal(L.shape)
    cat = np.where(tau < x[0], 0, np.where(tau <= 3, 1, np.where(tau <= x[-1], 2, 3)))
    status = np.zeros(n, np.int8)
    status[:10] = 2  # a few invalid fits
    return L, _Fit(tau=tau, tau_orig=tau_o, lam=lam, delta=de, post=post, status=status,
                   category=cat.astype(np.int8), axis=x, axis_orig=a, r2=np.ones(n))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    L, fit = _planted()
    res = spectrum.analyze(L, fit, transient=0.2, n_boot=20, n_bins=20, min_bin_count=10)
    out = tmp_path_factory.mktemp("figs")
    paths = figures.make_figures(res, out, axis_label="training step", run_name="planted")
    return out, paths


def test_all_figures_written(made):
    out, paths = made
    assert set(paths) == set(figures.FIGURE_NAMES)
    for name, png in paths.items():
        with open(png, "rb") as fh:
            head = fh.read(8)
        assert head == b"\x89PNG\r\n\x1a\n", name
        svg = out / f"{name}.svg"
        assert svg.stat().st_size > 10_000, name
        assert "<svg" in svg.read_text()[:2000], name
        # the PNG is a real picture, not a blank canvas
        from matplotlib.image import imread

        img = imread(png)
        assert img.shape[0] > 400 and img.shape[1] > 800, name
        assert float(np.std(img[..., :3])) > 0.05, name
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left


def test_bad_result_raises(tmp_path):
    with pytest.raises(TokenscaleError):
        figures.make_figures(object(), tmp_path)
