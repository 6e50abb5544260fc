"""Shared plotting helpers of the figure modules: colours, axis labels of a fit axis, the PNG + SVG writer and CI text.

Used by the decomposition figures (:mod:`tokenscale.analysis.figures`), the frontier figures
(:mod:`tokenscale.frontiers.figures`) and the study figures (alignment, reshaping, synthetic). Matplotlib's object API
on the Agg canvas (no pyplot, no global backend change). Imported only by figure code, never by the DAG build.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tokenscale.atomic import atomic_output

__all__ = ["C_EMP", "C_PL", "C_REC", "C_SIG", "C_SPEC", "AxisLabels", "fmt_ci", "positive", "save_figure",
           "set_xscale", "to_original"]

C_EMP = "#1f77b4"  # empirical
C_SIG = "#d62728"  # sigmoid-implied
C_REC = "#2ca02c"  # reconstruction
C_PL = "#7f7f7f"  # power law
C_SPEC = "#ff7f0e"  # spectrum


class AxisLabels:
    """Axis, rate, density, u, pulse, λ and τ labels of a fit axis named ``axis_label`` (``log10`` or linear)."""

    def __init__(self, transform: str, axis_label: str):
        self.log = transform == "log10"
        self.name = axis_label
        if self.log:
            self.axis = f"{axis_label} (log scale)"
            self.rate = f"−dL/d log10({axis_label}) (nats per decade)"
            self.density = f"p(τ): fraction of tokens per decade of {axis_label}"
            self.u = f"u = log10({axis_label}) − log10(τ) (decades)"
            self.pulse = "learning pulse (nats per decade)"
            self.lam = f"λ (per decade of {axis_label}, log scale)"
            self.tau = f"learning time τ ({axis_label}, log scale)"
        else:
            self.axis = axis_label
            self.rate = f"−dL/d({axis_label}) (nats per unit)"
            self.density = f"p(τ): fraction of tokens per unit {axis_label}"
            self.u = f"u = {axis_label} − τ"
            self.pulse = f"learning pulse (nats per unit {axis_label})"
            self.lam = f"λ (per unit {axis_label})"
            self.tau = f"learning time τ ({axis_label})"


def to_original(x, transform):
    """Values on the fit axis back in original units (``10**x`` for ``log10``)."""
    x = np.asarray(x, float)
    return 10.0**x if transform == "log10" else x


def set_xscale(ax, lab: AxisLabels):
    """A log x axis when the fit axis is ``log10``."""
    if lab.log:
        ax.set_xscale("log")


def save_figure(fig: Figure, outdir: Path, name: str) -> str:
    """Write ``fig`` as ``outdir/name.png`` (150 dpi) and ``outdir/name.svg``, each atomically; returns the PNG path.
    The figure's layout is frozen afterwards (its layout engine set to none)."""
    FigureCanvasAgg(fig)
    png = outdir / f"{name}.png"
    with atomic_output(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    # the PNG save solved the layout (constrained/tight); the SVG keeps it instead of solving it again
    # (t_smoke's 7 figures: 12.1 -> 10.2 CPU-s; the SVG's positions move by < 0.3 pt)
    fig.set_layout_engine("none")
    with atomic_output(outdir / f"{name}.svg") as tmp:
        fig.savefig(tmp, format="svg")
    return str(png)


def positive(y):
    """``y`` with non-positive entries as NaN (for log axes)."""
    y = np.asarray(y, float)
    return np.where(y > 0, y, np.nan)


def fmt_ci(v, ci, nd=3):
    """``v [lo, hi]`` with ``nd`` decimals; ``v`` alone without a finite CI; ``n/a`` without a finite value."""
    if v is None or not np.isfinite(v):
        return "n/a"
    if ci is None or not all(np.isfinite(ci)):
        return f"{v:.{nd}f}"
    return f"{v:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def number_or_nan(v) -> float:
    """A JSON number, or NaN for None (how the reports write NaN)."""
    return math.nan if v is None else float(v)


def spearman_text(d: dict) -> str:
    """A figure title's text of a Spearman entry ``{rho, ci_low, ci_high, n}`` of a report."""
    rho, lo, hi = number_or_nan(d.get("rho")), number_or_nan(d.get("ci_low")), number_or_nan(d.get("ci_high"))
    if not math.isfinite(rho):
        return "Spearman ρ n/a"
    ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"Spearman ρ = {rho:.3f}{ci} (n = {d.get('n')})"
