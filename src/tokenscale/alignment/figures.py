"""Figures of :mod:`tokenscale.alignment.compute` (PNG + SVG each, matplotlib object API on the Agg canvas).

* ``fig07_alignment`` – paper Fig. 7 (App. A.2): mean learning time τ with its bootstrap CI by domain (left),
  training-frequency bin (middle) and dependency length (right), each panel titled with its Spearman ρ [CI]
  (Kruskal–Wallis H and p for the nominal domains); a panel whose input was not given reads "not computed".
* ``plot_seed_agreement`` – τ of run A against τ of run B on the same tokens (Fig. 2, hypothesis A), with the
  diagonal and the agreement statistics in the title.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.plotting import C_EMP, save_figure

__all__ = ["ALIGNMENT_FIGURE_NAME", "plot_alignment", "plot_seed_agreement"]

ALIGNMENT_FIGURE_NAME = "fig07_alignment"
_PANELS = (("domain", "A. by domain"), ("frequency", "B. by training frequency of the target token"),
           ("dependency", "C. by dependency length"))


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _ci_text(d: dict) -> str:
    rho, lo, hi = _num(d.get("rho")), _num(d.get("ci_low")), _num(d.get("ci_high"))
    if not math.isfinite(rho):
        return "Spearman ρ n/a"
    ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"Spearman ρ = {rho:.3f}{ci} (n = {d.get('n')})"


def _test_text(t: dict) -> str:
    h, p = _num(t.get("statistic")), _num(t.get("p_value"))
    if not math.isfinite(h):
        return "Kruskal–Wallis n/a"
    return f"Kruskal–Wallis H = {h:.3g}, " + ("p < 1e-300" if p == 0 else f"p = {p:.2g}")


def _panel(ax, panel: dict | None, title: str, log: bool, ylabel: str, xlabel: str, conf: float) -> None:
    ax.set_title(title, fontsize=9, loc="left")
    if not panel or not panel.get("groups"):
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    rows = [r for r in panel["groups"] if r["n"]]
    pos = np.arange(len(rows))
    mean = np.array([_num(r["mean_orig"]) for r in rows])
    lo = np.array([_num(r["ci_low_orig"]) for r in rows])
    hi = np.array([_num(r["ci_high_orig"]) for r in rows])
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(pos[ok], mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], fmt="o", color=C_EMP, capsize=3,
                ms=5, label=f"mean τ, {conf:.0%} bootstrap CI")
    if (~ok).any():
        ax.plot(pos[~ok], mean[~ok], "o", mfc="none", color=C_EMP, ms=5, label="too few tokens for a CI")
    many = len(rows) > 6
    ax.set_xticks(pos, [f"{r['label']}{' ' if many else chr(10)}n={r['n']}" for r in rows], fontsize=7,
                  rotation=40 if many else 0, ha="right" if many else "center", rotation_mode="anchor")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    stat = _test_text(panel["test"]) if "test" in panel else _ci_text(panel.get("spearman") or {})
    ax.set_title(f"{title}\n{stat}", fontsize=9, loc="left")


def plot_alignment(table: dict, out_dir, *, axis_label: str = "training step") -> list[Path]:
    """Fig. 7 from an :func:`tokenscale.alignment.compute.align` table into ``out_dir``; returns the PNG and
    SVG paths.  y: mean τ in original units (a log axis, and the geometric mean, for a ``log10`` fit)."""
    if not isinstance(table, dict) or "transform" not in table:
        raise TokenscaleError("plot_alignment needs a table from tokenscale.alignment.compute.align")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = table["transform"] == "log10"
    ylabel = f"mean τ ({axis_label}{', geometric, log scale' if log else ''})"
    xlabels = {"domain": "domain", "frequency": "training count of the target token",
               "dependency": "dependency length (tokens of context)"}
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, _PANELS):
        _panel(ax, table.get(key), title, log, ylabel, xlabels[key], float(table.get("confidence", 0.95)))
    fig.suptitle(f"learning time τ by token property ({table.get('n_valid')} of {table.get('n_tokens')} tokens)",
                 fontsize=11)
    png = Path(save_figure(fig, out, ALIGNMENT_FIGURE_NAME))
    return [png, png.with_suffix(".svg")]


def plot_seed_agreement(tau_a, tau_b, stats: dict, out_path, *, valid=None, labels=("run A", "run B"),
                        axis_label: str = "fit axis x") -> list[Path]:
    """τ_a against τ_b (hexbin, or a scatter for fewer than 2000 tokens) with the diagonal; ``stats`` from
    :func:`tokenscale.alignment.compute.seed_agreement`.  Plots the finite pairs (within ``valid`` when given).
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
    mad = _num(stats.get("median_abs_diff"))
    ax.set_title(f"{_ci_text(stats.get('spearman') or {})}\nmedian |Δτ| = {mad:.3g}, "
                 f"IQR(Δτ) = {_num(stats.get('diff_iqr')):.3g}", fontsize=9)
    png = Path(save_figure(fig, out.parent, name))
    return [png, png.with_suffix(".svg")]
