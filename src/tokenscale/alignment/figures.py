"""Figures of :mod:`tokenscale.alignment.compute` (PNG + SVG each, matplotlib object API on the Agg canvas).

* ``fig07_alignment`` – paper Fig. 7 (App. A.2): mean learning time τ with its bootstrap CI by domain (left),
  training-frequency bin (middle) and dependency length (right), each panel titled with its Spearman ρ [CI]
  (Kruskal–Wallis H and p for the nominal domains); a panel whose input was not given reads "not computed".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.plotting import C_EMP, number_or_nan, save_figure, spearman_text

__all__ = ["ALIGNMENT_FIGURE_NAME", "plot_alignment"]

ALIGNMENT_FIGURE_NAME = "fig07_alignment"
_PANELS = (("domain", "A. by domain"), ("frequency", "B. by training frequency of the target token"),
           ("dependency", "C. by dependency length"))


def _test_text(t: dict) -> str:
    h, p = number_or_nan(t.get("statistic")), number_or_nan(t.get("p_value"))
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
    mean = np.array([number_or_nan(r["mean_orig"]) for r in rows])
    lo = np.array([number_or_nan(r["ci_low_orig"]) for r in rows])
    hi = np.array([number_or_nan(r["ci_high_orig"]) for r in rows])
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
    stat = _test_text(panel["test"]) if "test" in panel else spearman_text(panel.get("spearman") or {})
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


