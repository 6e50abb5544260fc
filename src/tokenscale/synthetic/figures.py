"""Figures of a synthetic modular-arithmetic (Mano) run (:mod:`tokenscale.synthetic.arithmetic`; paper App. A.3, Fig. 8–10).

PNG + SVG each, matplotlib object API (no pyplot), written with :func:`tokenscale.plotting.save_figure`. The functions
take plain numpy arrays and dicts (no file reading); each returns the written ``[png, svg]`` paths.

* ``fig08_levels`` – Fig. 8: per difficulty level ``L``, the mean answer-token loss and the answer accuracy
  over training steps (log x), one viridis colour per level; the accuracy panel has a dashed 0.5 line.
* ``fig09_level_trajectories`` – Fig. 9: one small panel per level with a few sampled answer-token loss
  trajectories (dots), their fitted sigmoids (dashed) and the level's mean loss (green).
* ``fig10_params_vs_tau`` – Fig. 10: loss drop Δ and sharpness λ against the learning time τ, one point per
  answer token, coloured by level.
* ``fig10b_shape_starts`` – the shape test's ΔAIC (linear − power law; > 0: power law) against the first
  checkpoint kept, with the ``fit.start`` and ``dpeak`` starts marked.

Sigmoids are those of the fit (:mod:`tokenscale.fit.problem`) on the ``log10``-step axis ``x``::

    loss(x) = post + Δ·[1 − σ(λ(x − τ))] = post + Δ·σ(λ(τ − x))

Units: losses in nats; τ in the fit's ``log10`` step (plotted as steps); λ per decade of steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import cm, colormaps, colors
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.plotting import save_figure
from tokenscale.io.fits import logistic

__all__ = ["SYNTHETIC_FIGURE_NAMES", "plot_levels", "plot_level_trajectories", "plot_params_vs_tau",
           "plot_shape_over_starts"]

SYNTHETIC_FIGURE_NAMES = ("fig08_levels", "fig09_level_trajectories", "fig10_params_vs_tau", "fig10b_shape_starts")
C_LEVEL_MEAN = "#2ca02c"  # a level's mean loss (Fig. 9, green as in the paper)
FIT_KEYS = ("tau", "lam", "delta", "post")


def _paths(png: str) -> list[Path]:
    p = Path(png)
    return [p, p.with_suffix(".svg")]


def _outdir(outdir) -> Path:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _array(name: str, a, shape: tuple) -> np.ndarray:
    """``a`` as float64 of exactly ``shape`` (one-line error otherwise)."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape != shape:
        raise TokenscaleError(f"synthetic figure: {name} has shape {a.shape}, expected {shape}")
    return a


def _steps(name: str, steps) -> np.ndarray:
    s = np.asarray(steps, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or not np.all(s > 0):
        raise TokenscaleError(f"synthetic figure: {name} must be >= 2 positive steps (log axis), got {s[:4].tolist()}")
    return s


def _level_norm(levels: np.ndarray) -> colors.Normalize:
    lo, hi = float(np.min(levels)), float(np.max(levels))
    return colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)


def plot_levels(steps, levels, loss, accuracy, outdir, *, title: str, baseline: dict | None = None) -> list[Path]:
    """Fig. 8: per-level mean answer loss and answer accuracy against step (log x).

    ``steps`` (K,), ``levels`` (n_levels,) ints, ``loss`` and ``accuracy`` (n_levels, K); ``baseline``
    ({level: accuracy}) draws each level's level-only baseline as a dotted line in its colour."""
    s = _steps("steps", steps)
    lv = np.asarray(levels).astype(int).ravel()
    shape = (lv.size, s.size)
    loss, acc = _array("loss", loss, shape), _array("accuracy", accuracy, shape)
    norm, cmap = _level_norm(lv), colormaps["viridis"]
    baseline = {int(k): float(v) for k, v in (baseline or {}).items()}  # JSON gives string keys
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_l, ax_a = fig.subplots(1, 2)
    for i, lev in enumerate(lv):
        c = cmap(norm(lev))
        ax_l.plot(s, loss[i], color=c, lw=1.4, label=f"L{lev}")
        ax_a.plot(s, acc[i], color=c, lw=1.4)
        if int(lev) in baseline:
            ax_a.axhline(float(baseline[int(lev)]), color=c, lw=0.9, ls=":")
    ax_a.axhline(0.5, color="0.4", lw=0.9, ls="--", label="accuracy 0.5")
    if baseline:
        ax_a.plot([], [], color="0.4", lw=0.9, ls=":", label="level-only baseline (most frequent answer)")
    ax_a.set_ylim(-0.02, 1.02)
    for ax, ylab, name in ((ax_l, "mean answer loss (nats)", "loss"), (ax_a, "answer accuracy", "accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("training step (log scale)")
        ax.set_ylabel(ylab)
        ax.set_title(f"validation {name} by difficulty level", fontsize=10)
    ax_l.legend(fontsize=7, ncol=2, title="level", title_fontsize=7)
    ax_a.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}: learning order across difficulty levels", fontsize=11)
    return _paths(save_figure(fig, _outdir(outdir), "fig08_levels"))


def _fit_arrays(fits: dict, n: int) -> tuple[dict, np.ndarray]:
    """The (n,) sigmoid parameters (``post``, or its alias ``l_post``) and the valid mask: ``fits["valid"]``
    (all rows when absent) and every parameter finite."""
    src = dict(fits)
    if "post" not in src and "l_post" in src:
        src["post"] = src["l_post"]
    missing = [k for k in FIT_KEYS if k not in src]
    if missing:
        raise TokenscaleError(f"synthetic figure: fits lacks {missing[0]!r} (needs {', '.join(FIT_KEYS)})")
    p = {k: _array(f"fits[{k!r}]", src[k], (n,)) for k in FIT_KEYS}
    valid = np.asarray(src.get("valid", np.ones(n, bool)), dtype=bool)
    if valid.shape != (n,):
        raise TokenscaleError(f"synthetic figure: fits['valid'] has shape {valid.shape}, expected ({n},)")
    return p, valid & np.all([np.isfinite(v) for v in p.values()], axis=0)


def _sigmoid(xg: np.ndarray, p: dict, i: int) -> np.ndarray:
    return p["post"][i] + p["delta"][i] * logistic(p["lam"][i] * (p["tau"][i] - xg))


def _trajectory_panel(ax, s, losses, rows, p, pick, lev, n_valid):
    """One level: the level mean over ``rows``, and the ``pick`` tokens (dots) with their sigmoids (dashed)."""
    xg = np.linspace(math.log10(s[0]), math.log10(s[-1]), 200)
    pal = ["#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#8c564b"]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(losses[rows], axis=0) if rows.size else np.full(s.size, np.nan)
    ax.plot(s, mean, color=C_LEVEL_MEAN, lw=1.6, label="level mean")
    for j, i in enumerate(pick):
        c = pal[j % len(pal)]
        ax.plot(s, losses[i], "o", color=c, ms=2.0, alpha=0.7)
        ax.plot(10.0**xg, _sigmoid(xg, p, i), "--", color=c, lw=1.2)
    if not pick.size:
        ax.text(0.5, 0.5, "no valid fit", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xscale("log")
    ax.set_title(f"L{lev}: {pick.size} shown, {n_valid} of {rows.size} tokens selected", fontsize=8)


def plot_level_trajectories(x_steps, losses, levels, fits, outdir, *, per_level: int = 3,
                            seed: int = 0) -> list[Path]:
    """Fig. 9: per level, ``per_level`` answer-token trajectories drawn at random (``seed``) among the valid
    fits, with their sigmoids and the level's mean loss.

    ``x_steps`` (K,) steps, ``losses`` (N, K), ``levels`` (N,) ints, ``fits``: (N,) arrays ``tau, lam, delta,
    post`` (``l_post`` accepted) on the ``log10``-step axis and an optional (N,) bool ``valid``."""
    s = _steps("x_steps", x_steps)
    lv = np.asarray(levels).astype(int).ravel()
    losses = _array("losses", losses, (lv.size, s.size))
    p, valid = _fit_arrays(fits, lv.size)
    uniq = np.unique(lv)
    ncols = min(5, max(uniq.size, 1))
    nrows = max(1, math.ceil(uniq.size / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axs = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    rng = np.random.default_rng(seed)
    for ax, lev in zip(axs, uniq):
        rows = np.nonzero(lv == lev)[0]
        ok = rows[valid[rows]]
        pick = np.sort(rng.choice(ok, size=min(per_level, ok.size), replace=False)) if ok.size else ok
        _trajectory_panel(ax, s, losses, rows, p, pick, lev, ok.size)
    for ax in axs[uniq.size:]:
        ax.set_axis_off()
    for ax in axs[(nrows - 1) * ncols:]:
        ax.set_xlabel("training step")
    for ax in axs[::ncols]:
        ax.set_ylabel("answer loss (nats)")
    axs[0].plot([], [], "o", color="0.3", ms=2.0, label="token loss")
    axs[0].plot([], [], "--", color="0.3", lw=1.2, label="sigmoid fit")
    axs[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("answer-token loss trajectories by difficulty level (dots), sigmoid fits (dashed), "
                 "level mean (green)", fontsize=10)
    return _paths(save_figure(fig, _outdir(outdir), "fig09_level_trajectories"))


def plot_params_vs_tau(tau_steps, delta, lam, levels, outdir) -> list[Path]:
    """Fig. 10: Δ vs τ and λ vs τ, one point per token, coloured by level (log x; log y for λ when all > 0).

    ``tau_steps`` (N,) learning times in steps, ``delta`` (N,) nats, ``lam`` (N,) per decade, ``levels`` (N,);
    tokens with a non-finite value or τ ≤ 0 are left out."""
    lv = np.asarray(levels).astype(int).ravel()
    n = lv.size
    tau, de, la = (_array(k, v, (n,)) for k, v in (("tau_steps", tau_steps), ("delta", delta), ("lam", lam)))
    ok = np.isfinite(tau) & (tau > 0) & np.isfinite(de) & np.isfinite(la)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axs = fig.subplots(1, 2)
    norm = _level_norm(lv) if n else colors.Normalize(0, 1)
    for ax, y, ylab in ((axs[0], de, "loss drop Δ (nats)"), (axs[1], la, "λ (per decade of steps)")):
        ax.scatter(tau[ok], y[ok], c=lv[ok], cmap="viridis", norm=norm, s=6, alpha=0.7, lw=0)
        ax.set_xscale("log")
        if ax is axs[1] and ok.any() and np.all(la[ok] > 0):
            ax.set_yscale("log")
        ax.set_xlabel("learning time τ (training step, log scale)")
        ax.set_ylabel(ylab)
    axs[0].set_title("Δ vs learning time", fontsize=10)
    axs[1].set_title("λ vs learning time", fontsize=10)
    cb = fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axs), pad=0.01)
    cb.set_label("difficulty level L")
    fig.suptitle(f"token sigmoid parameters vs learning time ({int(ok.sum())} of {n} tokens selected)", fontsize=11)
    return _paths(save_figure(fig, _outdir(outdir), "fig10_params_vs_tau"))


def plot_shape_over_starts(over: dict, outdir, *, title: str, marks: dict | None = None) -> list[Path]:
    """``fig10b_shape_starts``: ΔAIC against the first step kept (:func:`tokenscale.synthetic.shape.shape_over_starts`
    output), a zero line (above: power law preferred) and a dashed vertical line per ``marks`` ({label: step})."""
    x = np.asarray(over["start_step"], dtype=np.float64)
    d = np.asarray(over["delta_aic"], dtype=np.float64)
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, d, "o-", color="0.2", ms=3, lw=1)
    ax.axhline(0.0, color="0.5", lw=0.8)
    for (label, step), c in zip((marks or {}).items(), ("tab:red", "tab:blue", "tab:green")):
        ax.axvline(float(step), color=c, ls="--", lw=1, label=f"{label}: step {float(step):g}")
    if x.size and np.all(x > 0):
        ax.set_xscale("log")
    ax.set_xlabel("first checkpoint kept (training step, log scale)")
    ax.set_ylabel("ΔAIC = AIC(line) − AIC(power law)")
    if marks:
        ax.legend(fontsize=7)
    ax.set_title(f"{title}\n(> 0: power law preferred, < 0: straight line)", fontsize=9)
    return _paths(save_figure(fig, _outdir(outdir), "fig10b_shape_starts"))
