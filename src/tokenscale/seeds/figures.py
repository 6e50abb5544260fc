"""Figure of the seed agreement (paper Fig. 2): τ of one run against τ of the same run under another seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.plotting import C_EMP, number_or_nan, save_figure, spearman_text


def plot_seed_agreement(tau_a, tau_b, stats: dict, out_path, *, valid=None, labels=("run A", "run B"),
                        axis_label: str = "fit axis x") -> list[Path]:
    """τ_a against τ_b (hexbin, or a scatter for fewer than 2000 tokens) with the diagonal; ``stats`` from
    :func:`tokenscale.seeds.compute.seed_agreement`.  Plots the finite pairs (within ``valid`` when given).
    Writes ``out_path`` as PNG and SVG (a ``.png``/``.svg`` suffix is replaced); returns both paths."""
    a = np.asarray(tau_a, dtype=float).reshape(-1)
    b = np.asarray(tau_b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise TokenscaleError(f"tau_a has {a.size} entries but tau_b has {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).reshape(-1)
    a, b = a[keep], b[keep]
    out = Path(out_path)
    name = out.stem if out.suffix in (".png", ".svg") else out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.6, 5), layout="constrained")
    ax = fig.add_subplot()
    if a.size >= 2000:
        hb = ax.hexbin(a, b, gridsize=60, bins="log", cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, pad=0.01).set_label("tokens (log)")
    elif a.size:
        ax.plot(a, b, ".", color=C_EMP, ms=3, alpha=0.5)
    if a.size:
        lim = [min(a.min(), b.min()), max(a.max(), b.max())]
        ax.plot(lim, lim, "--", color="k", lw=1, label="τ_A = τ_B")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no token valid in both runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"τ, {labels[0]} ({axis_label})")
    ax.set_ylabel(f"τ, {labels[1]} ({axis_label})")
    mad = number_or_nan(stats.get("median_abs_diff"))
    ax.set_title(f"{spearman_text(stats.get('spearman') or {})}\nmedian |Δτ| = {mad:.3g}, "
                 f"IQR(Δτ) = {number_or_nan(stats.get('diff_iqr')):.3g}", fontsize=9)
    png = Path(save_figure(fig, out.parent, name))
    return [png, png.with_suffix(".svg")]
