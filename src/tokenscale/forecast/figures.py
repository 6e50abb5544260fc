"""Figures of the forecast: one series' forecast past its last checkpoint (observed loss, forecast band, power law),
and the backtest (per cut: the truth, the spectrum forecast with its band, the power law, the naive sigmoids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tokenscale.plotting import save_figure


def _draw(ax, r: dict, *, legend: bool) -> None:
    """One forecast on ``ax``: the observed prefix, the truth (if any), the forecast band and the baselines."""
    obs = r.get("observed")
    if obs is not None:
        ax.plot(obs["axis"], obs["mean_loss"], "k.-", lw=1, label="observed")
    if r.get("truth") is not None:
        ax.plot(r["axis"], r["truth"], "k-", lw=2, label="truth")
    ax.fill_between(r["axis"], r["lo"], r["hi"], color="C0", alpha=0.3, lw=0)
    ax.plot(r["axis"], r["forecast"], "C0-", label="spectrum forecast (95 % band)")
    ax.plot(r["axis"], r["power_law"], "C3--", label="power law")
    ax.plot(r["axis"], r["naive_sigmoids"], "C2:", label="naive sigmoids")
    ax.axvline(r["cut"], color="0.5", lw=0.8)
    ax.set_xscale("log")
    if legend:
        ax.legend(fontsize=7)


def forecast_figure(r: dict, path) -> str:
    """The workflow's forecast figure of one series (``path``: its PNG; an SVG is written next to it)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, r, legend=True)
    ax.set_xlabel("axis (original units)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(f"{r['series']}: forecast from {r['k']} points, beta {r['beta']:.2f}", fontsize=9)
    p = Path(path)
    return save_figure(fig, p.parent, p.stem)


def backtest_figure(rows: list[dict], observed: dict, path) -> str:
    """One panel per cut of a series' backtest (rows with an error get a panel with its line)."""
    fig = Figure(figsize=(4 * len(rows), 3.6))
    for i, r in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), i + 1)
        if "error" in r:
            ax.text(0.5, 0.5, r["error"], ha="center", va="center", wrap=True, fontsize=7, transform=ax.transAxes)
            continue
        ax.plot(observed["axis"], observed["mean_loss"], "k.", ms=3)
        _draw(ax, r, legend=i == 0)
        e = r["errors"]
        ax.set_title(f"{r['series']} cut {r['frac']:g}: max err spectrum {100 * e['spectrum']['max_rel_err']:.1f} %, "
                     f"power law {100 * e['power_law']['max_rel_err']:.1f} %", fontsize=7)
        ax.set_ylim(np.min(observed["mean_loss"][-len(r["truth"]) - 2:]) * 0.9, None)
    p = Path(path)
    return save_figure(fig, p.parent, p.stem)
