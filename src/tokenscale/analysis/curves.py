"""Stage 2: the aggregate curves on the axis points (empirical and sigmoid-implied mean loss and −dL/dx) and the
transient rule that picks the post-transient points every later metric uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokenscale import TokenscaleError

from tokenscale.analysis.accumulate import Inputs, Sums
from tokenscale.analysis.numerics import derivative, to_x
from tokenscale.analysis.options import AnalysisOptions

__all__ = ["Curves", "aggregate_curves", "transient_start"]


@dataclass
class Curves:
    loss_emp: np.ndarray  # (K,) mean loss over valid tokens
    loss_sig: np.ndarray  # (K,) mean fitted sigmoid
    deriv_emp: np.ndarray  # (K,) −dL/dx of loss_emp
    deriv_sig: np.ndarray  # (K,) mean fitted pulse
    deriv_sig_grid: np.ndarray  # (F,)
    post_mask: np.ndarray  # (K,) bool
    transient_start_x: float
    transient_rule: str
    note: str | None = None  # why the post-transient metrics are undefined (fewer than 3 points), else None


def transient_start(rule, x: np.ndarray, loss: np.ndarray, transform: str) -> tuple[float, str]:
    if rule is None or (isinstance(rule, str) and rule == "none"):
        return float(x[0]), "none"
    if isinstance(rule, str) and rule == "peak":
        return float(x[int(np.nanargmax(loss))]), "peak"
    if isinstance(rule, str) and rule == "dpeak":
        # the power-law regime starts where the loss falls fastest per unit x: before that the mean loss
        # is still on its initial plateau (random-init loss), which no k*a^-alpha + E describes
        d = -np.gradient(np.asarray(loss, dtype=np.float64), x)
        if not np.isfinite(d).any():
            raise TokenscaleError("transient 'dpeak': the empirical mean loss has no finite derivative")
        return float(x[int(np.nanargmax(d))]), "dpeak"
    if isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[0] == "start":
        xs = float(to_x(float(rule[1]), transform))
        if not math.isfinite(xs):
            raise TokenscaleError(f"transient start {rule[1]!r} is not valid on a {transform} axis")
        return xs, f"start={float(rule[1]):g}"
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        f = float(rule)
        if not 0.0 <= f < 1.0:
            raise TokenscaleError(f"transient fraction must be in [0, 1), got {f}")
        return float(x[0] + f * (x[-1] - x[0])), f"frac={f:g}"
    raise TokenscaleError(f"transient must be a fraction, 'peak', 'dpeak', 'none' or ('start', a), got {rule!r}")


def aggregate_curves(s: Sums, inp: Inputs, opts: AnalysisOptions) -> Curves:
    """Mean curves from the sums, and the post-transient points. With fewer than 3 of them the curves are still
    returned, with a ``note`` saying why the power law and the post-transient metrics are undefined (a series
    whose loss still speeds up at its end must not stop the rest of its analysis, or of the workflow)."""
    loss_emp = s.loss / s.n_valid
    deriv_emp = derivative(loss_emp, inp.x, opts.smoothing, savgol_window=opts.savgol_window,
                           savgol_polyorder=opts.savgol_polyorder)
    ts_x, ts_rule = transient_start(opts.transient, inp.x, loss_emp, inp.transform)
    post_mask = inp.x >= ts_x - 1e-12
    note = None
    if post_mask.sum() < 3:
        hint = (" (the loss is still speeding up at the end of the run: train longer, or set "
                "analysis.transient to a fraction or 'none')" if ts_rule == "dpeak" else "")
        note = (f"transient rule {ts_rule} leaves {int(post_mask.sum())} axis points; need >= 3 for the power law "
                f"and the post-transient metrics, which are null{hint}")
    return Curves(loss_emp=loss_emp, loss_sig=s.sig / s.n_valid, deriv_emp=deriv_emp, deriv_sig=s.pk / s.n_valid,
                  deriv_sig_grid=s.sig_grid / s.n_valid, post_mask=post_mask, transient_start_x=ts_x,
                  transient_rule=ts_rule, note=note)
