"""Stage 6: the reconstruction L′ ≈ p∗g (Eq. 6) and the metrics against the empirical derivative at the
post-transient points."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokenscale.analysis.accumulate import Inputs, Layout, Sums
from tokenscale.analysis.curves import Curves
from tokenscale.analysis.numerics import fit_quality, fwhm
from tokenscale.analysis.pulses import Pulses

__all__ = ["Reconstruction", "reconstruct_stage", "metrics_stage"]


@dataclass
class Reconstruction:
    deriv_rec: np.ndarray  # (K,) p∗g at the axis points
    deriv_rec_grid: np.ndarray  # (F,)
    deriv_rec_emp: np.ndarray  # (K,) p∗g with the empirical template


def reconstruct_stage(s: Sums, inp: Inputs, lay: Layout, pu: Pulses) -> Reconstruction:
    """p = fraction of valid tokens per grid cell of the extended window (selected tokens), convolved with g."""
    e = lay.ext_of[s.final_valid]
    p_ext = np.bincount(e[e >= 0], minlength=lay.n_ext) / s.n_valid  # = p · h
    M, F = lay.M, lay.F
    rec_grid = np.convolve(p_ext, pu.template, mode="same")[M:M + F]
    rec_emp = np.convolve(p_ext, np.nan_to_num(pu.template_emp), mode="same")[M:M + F]
    return Reconstruction(deriv_rec=np.interp(inp.x, lay.grid, rec_grid), deriv_rec_grid=rec_grid,
                          deriv_rec_emp=np.interp(inp.x, lay.grid, rec_emp))


def metrics_stage(cv: Curves, rec: Reconstruction, deriv_pl: np.ndarray, pu: Pulses, svd: dict,
                  lay: Layout) -> dict:
    """R² and normalised errors at the post-transient points, mean-loss error, template shape numbers."""
    pm = cv.post_mask if cv.note is None else np.zeros_like(cv.post_mask)  # too few points: every metric null
    pairs = {"sigmoid_deriv": (cv.deriv_sig, cv.deriv_emp), "reconstruction": (rec.deriv_rec, cv.deriv_emp),
             "powerlaw_deriv": (deriv_pl, cv.deriv_emp), "reconstruction_vs_sigmoid": (rec.deriv_rec, cv.deriv_sig),
             "reconstruction_emp_template": (rec.deriv_rec_emp, cv.deriv_emp)}
    m = {}
    for name, (pred, ref) in pairs.items():
        m[f"r2_{name}"], m[f"nerr_{name}"] = fit_quality(pred[pm], ref[pm])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(cv.loss_sig - cv.loss_emp) / np.abs(cv.loss_emp)
    g, ge, h = pu.template, pu.template_emp, lay.h
    w = fwhm(lay.u_grid, g)
    m.update({
        "template_emp_fwhm_x": fwhm(lay.u_grid, np.nan_to_num(ge, nan=-np.inf)),
        "template_emp_peak_ratio": (float(np.nanmax(ge)) / float(np.max(g))
                                    if np.any(np.isfinite(ge)) and np.max(g) > 0 else math.nan),
        "mean_loss_max_rel_err": float(np.nanmax(rel[pm])) if pm.any() else math.nan,
        "mean_loss_mean_rel_err": float(np.nanmean(rel[pm])) if pm.any() else math.nan,
        "svd_energy1": svd["svd_energy1"], "svd_energy2": svd["svd_energy2"],
        "svd_energy1_fit": svd["svd_energy1_fit"], "svd_energy2_fit": svd["svd_energy2_fit"],
        "template_fwhm_x": w,
        "template_area": float(np.sum(g) * h),
        "grid_h_x": float(h),
        "template_resolved": bool(math.isfinite(w) and w >= 4 * h),
    })
    return m
