"""The forecast stage: a series' trajectories and fits -> its forecast JSON and figure (``tokenscale forecast``), and
the cut-and-predict backtest the benchmark runs (:func:`backtest`). The math is :mod:`tokenscale.forecast.compute`."""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.analysis.numerics import jsonable
from tokenscale.analysis.stage import fit_columns
from tokenscale.forecast.compute import (
    baselines,
    classify,
    cut_points,
    errors,
    forecast_mean,
    prefix_tail,
)
from tokenscale.io import read_run_trajectories
from tokenscale.io.fits import load_fits

DEFAULT_HORIZON = 4.0  # analysis.forecast_horizon = null: forecast up to 4x the last axis value
FIT_COLUMNS = ("tau", "lam", "delta", "post", "r2", "status")


def load_series(trajectories: list, fits) -> dict:
    """A series' losses on its fit axis with its fits: {losses (N, K), a, x, transform, fit (dict of (N,) arrays)}."""
    losses, axis, _ = read_run_trajectories(trajectories)
    f = load_fits(fits)
    if len(f) != losses.shape[0]:
        raise TokenscaleError(f"{fits}: {len(f)} fits but {losses.shape[0]} trajectories; rerun the fit rules")
    return {"losses": fit_columns(losses, axis, f, fits), "a": np.asarray(f.axis_orig, float),
            "x": np.asarray(f.axis, float), "transform": f.transform,
            "fit": {c: np.asarray(getattr(f, c)) for c in FIT_COLUMNS}}


def fit_prefix(L: np.ndarray, a: np.ndarray, transform: str) -> dict:
    """The project's sigmoid fits of the prefix losses (the fit engine's defaults on the prefix axis)."""
    from tokenscale.fit.api import fit_sigmoids  # torch: only a refit pays for it

    f = fit_sigmoids(L, a, transform=transform)
    return {c: np.asarray(getattr(f, c)) for c in FIT_COLUMNS}


def forecast_from(s: dict, k: int, xt: np.ndarray, fit: dict, *, series: str, n_boot: int, seed: int) -> dict:
    """Forecast of ``s``'s mean loss at ``xt`` from its first ``k`` points and their fits, with the baselines."""
    L, x, a, tr = s["losses"][:, :k], s["x"][:k], s["a"][:k], s["transform"]
    learned, partial, _ = classify(fit, x[-1])
    tail = prefix_tail(fit["tau"], learned | partial | ((fit["delta"] >= 0.2) & (fit["tau"] <= x[-1])), x, tr,
                       n_boot=n_boot, seed=seed)
    if not math.isfinite(tail["beta"]):
        raise TokenscaleError(f"{series}: the spectrum of the first {k} points has no tail fit ({tail['note']})")
    at = 10.0**xt if tr == "log10" else xt
    fc = forecast_mean(L, x, xt, fit, tr, beta=tail["beta"], beta_se=tail["beta_se"], n_boot=n_boot, seed=seed)
    base = baselines(L, a, x, at, xt, fit)
    return {"series": series, "k": k, "cut": float(a[-1]), "axis": at, "x": xt, "forecast": fc["mean"],
            "lo": fc["lo"], "hi": fc["hi"], "beta": tail["beta"], "beta_ci": tail["beta_ci"], "lam_p": fc["lam_p"],
            "counts": fc["counts"], **{n: base[n] for n in ("power_law", "naive_sigmoids", "last_value")},
            "power_fit": base["power_fit"]}


def at_cut(s: dict, frac: float | None, *, series: str, n_boot: int, seed: int, horizon: float | None = None) -> dict:
    """Backtest at a cut (``frac`` of the axis span): refit the prefix, predict the rest, score against the truth.
    ``frac`` None: forecast past the last point up to ``horizon`` x its axis value (no truth)."""
    x = s["x"]
    k = cut_points(x, frac, series)
    if frac is None or k == x.size:
        h = DEFAULT_HORIZON if horizon is None else float(horizon)
        step = math.log10(h) if s["transform"] == "log10" else (h - 1.0) * x[-1]
        return forecast_from(s, x.size, x[-1] + step * np.arange(1, 17) / 16, s["fit"], series=series,
                             n_boot=n_boot, seed=seed)
    t0 = time.time()
    fit = fit_prefix(s["losses"][:, :k], s["a"][:k], s["transform"])
    r = forecast_from(s, k, x[k:], fit, series=series, n_boot=n_boot, seed=seed)
    truth = s["losses"][:, k:].mean(0, dtype=np.float64)
    r["truth"] = truth
    r["errors"] = {"spectrum": errors(r["forecast"], truth, r["lo"], r["hi"]),
                   **{n: errors(r[n], truth) for n in ("power_law", "naive_sigmoids", "last_value")}}
    r["frac"], r["seconds"] = frac, time.time() - t0
    return r


def backtest(s: dict, cuts, *, series: str, n_boot: int, seed: int) -> list[dict]:
    """:func:`at_cut` at every cut; a cut that cannot be forecast is a row with its one-line reason."""
    rows = []
    for frac in cuts:
        try:
            rows.append(at_cut(s, frac, series=series, n_boot=n_boot, seed=seed))
        except TokenscaleError as e:
            rows.append({"series": series, "frac": frac, "error": str(e)})
        print(f"forecast: {series}: cut {frac}: " + (rows[-1].get("error") or "ok"), file=sys.stderr)
    return rows


def run_forecast(*, trajectories: list, fits, series: str, options: dict, out, figure=None) -> dict:
    """The workflow's forecast of one series (options: the config's analysis keys n_boot, seed, forecast_cut,
    forecast_horizon) -> forecast JSON (and its figure). Returns the result."""
    s = load_series(trajectories, fits)
    r = at_cut(s, options.get("forecast_cut"), series=series, n_boot=int(options.get("n_boot", 200)),
               seed=int(options.get("seed", 0)), horizon=options.get("forecast_horizon"))
    r["observed"] = {"axis": s["a"], "mean_loss": s["losses"].mean(0, dtype=np.float64)}
    atomic.write_json(out, jsonable(r))
    if figure:
        from tokenscale.forecast.figures import forecast_figure

        forecast_figure(r, figure)
    return r
