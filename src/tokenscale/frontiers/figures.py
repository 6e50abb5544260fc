"""Frontier figures of a D or M sweep (paper Fig. 4 / Fig. 5, panels A and B; PNG + SVG each).

* ``fig04a_runs_envelope`` – every run's validation-loss curve coloured by its group value, the shared trunk(s)
  dashed, the lower envelope over all checkpoints and the frontier points.
* ``fig04b_frontier`` – the frontier loss on the series' axis with its power law fitted after the transient.

Panel C is the series' decomposition (:func:`tokenscale.analysis.figures.make_figures`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.frontiers.compute import envelope
from tokenscale.plotting import C_EMP, C_PL, C_SIG, fmt_ci, save_figure

__all__ = ["FRONTIER_FIGURE_NAMES", "frontier_figures"]

FRONTIER_FIGURE_NAMES = ("fig04a_runs_envelope", "fig04b_frontier")  # Fig. 4 (D) / Fig. 5 (M), panels A and B


def _run_x(curve, axis: str) -> np.ndarray:
    """A run's x in Fig. A: tokens seen (D), or training compute = FLOPs/token x tokens seen (M)."""
    tokens = np.asarray(curve.tokens, dtype=float)
    return tokens if axis == "D" else curve.group * tokens


def _fig04a(curves, trunks, table, axis: str, outdir: Path, title: str) -> str:
    """Every run's validation-loss curve coloured by its group value, the trunk(s) dashed, the lower envelope
    over all checkpoints, and the frontier points (the best recipe's final checkpoint per group)."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    groups = np.array([c.group for c in curves])
    norm = colors.LogNorm(vmin=groups.min(), vmax=max(groups.max(), groups.min() * 1.0001))
    for c in curves:
        ax.plot(_run_x(c, axis), c.loss, "-", color=cm.viridis(norm(c.group)), lw=1, alpha=0.8)
    for t in trunks:
        ax.plot(np.asarray(t.tokens, float), t.loss, "--", color="0.5", lw=1, label=f"shared trunk {t.run}")
    xs = np.concatenate([_run_x(c, axis) for c in curves])
    ls = np.concatenate([c.loss for c in curves])
    ok = xs > 0
    ex, ey = envelope(xs[ok], ls[ok])
    ax.step(ex, ey, where="post", color="k", lw=2, label="envelope (lowest loss so far)")
    by_run = {c.run: c for c in curves}
    fx = [_run_x(by_run[r["run"]], axis)[-1] for r in table]
    ax.plot(fx, [r["val_loss"] for r in table], "o", color=C_SIG, ms=6, label="frontier points (best final)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen" if axis == "D" else "training compute: non-embedding FLOPs/token × tokens seen")
    ax.set_ylabel("validation loss (nats)")
    sm = cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(sm, ax=ax, pad=0.01).set_label("token budget" if axis == "D" else "non-embedding FLOPs/token")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: {len(curves)} runs, {len(table)} frontier points", fontsize=10)
    return save_figure(fig, outdir, FRONTIER_FIGURE_NAMES[0])


def _fig04b(table, axis_values, summary: dict, axis: str, outdir: Path, title: str) -> str:
    """Frontier loss on the series' axis with the power law L = k a^-alpha + E fitted after the transient;
    non-monotone points drawn open."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    a = np.asarray(axis_values, float)
    loss = np.array([r["val_loss"] for r in table], float)
    mono = np.array([bool(r["monotone"]) for r in table])
    ax.plot(a[mono], loss[mono], "o", color=C_EMP, label="frontier loss")
    if (~mono).any():
        ax.plot(a[~mono], loss[~mono], "o", mfc="none", color=C_EMP, label="not below a smaller setting")
    pl = summary.get("power_law") or {}
    if pl.get("alpha") is not None and pl.get("k") is not None:
        start = summary.get("transient_start") or a[0]
        grid = np.geomspace(a[0], a[-1], 200)
        curve = pl["k"] * grid ** (-pl["alpha"]) + pl["E"]
        post = grid >= start
        ci = pl.get("alpha_ci")
        ci = None if ci is None or None in ci else ci
        r2 = pl.get("r2")
        ax.plot(grid[post], curve[post], "-", color=C_PL,
                label=f"k·a^−α + E, α = {fmt_ci(pl['alpha'], ci)}, R² {r2 if r2 is None else round(r2, 3)}")
        ax.plot(grid[~post], curve[~post], ":", color=C_PL)
        ax.axvline(start, color="0.8", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (D)" if axis == "D" else "non-embedding FLOPs/token (M)")
    ax.set_ylabel("validation loss (nats)")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: frontier on the {axis} axis", fontsize=10)
    return save_figure(fig, outdir, FRONTIER_FIGURE_NAMES[1])


def frontier_figures(curves, trunks, table, axis_values, summary: dict, axis: str, outdir, *,
                     title: str = "frontier") -> dict[str, str]:
    """Fig. 4/5 A (runs, envelope, frontier points) and B (frontier with its power law) of a D or M sweep; panel C
    is the series' decomposition (:func:`make_figures`). Returns ``{name: png_path}``."""
    if axis not in ("D", "M"):
        raise TokenscaleError(f"frontier figures: axis must be D or M, got {axis!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {FRONTIER_FIGURE_NAMES[0]: _fig04a(curves, trunks, table, axis, outdir, title),
            FRONTIER_FIGURE_NAMES[1]: _fig04b(table, axis_values, summary, axis, outdir, title)}
