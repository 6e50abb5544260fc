"""Stage 5: per-bin pulses, their alignment on u = x − τ, the shared template g(u) (Eq. 4), and the SVD of the
aligned pulses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokenscale.analysis.accumulate import Inputs, Layout, Sums
from tokenscale.analysis.numerics import derivative
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.analysis.spectrum import Spectrum

__all__ = ["Pulses", "pulses_stage", "svd_stage"]


@dataclass
class Pulses:
    pulse_emp: np.ndarray  # (B, K) per-bin mean empirical pulse at the axis points
    pulse_fit_grid: np.ndarray  # (B, F) per-bin mean fitted pulse on the grid
    aligned_emp: np.ndarray  # (B, U) bin-aligned empirical pulses (NaN outside the window)
    aligned_fit: np.ndarray  # (B, U) token-aligned fitted pulses per bin
    g_half: np.ndarray  # (M+1,) template for u >= 0
    template: np.ndarray  # (U,) g(u)
    template_emp: np.ndarray  # (U,) Eq. 4 from empirical per-token derivatives (NaN off-range)


def _per_bin_mean(acc: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None] > 0, acc / n[:, None], np.nan)


def _align_empirical(pulse_emp, bin_n, bin_tau, x, u_grid) -> np.ndarray:
    """Each bin's empirical pulse shifted by its mean τ onto u (NaN where τ_b + u leaves the window)."""
    out = np.full((bin_n.size, u_grid.size), np.nan)
    for bi in range(bin_n.size):
        if bin_n[bi] > 0 and np.all(np.isfinite(pulse_emp[bi])):
            xs = bin_tau[bi] + u_grid
            inside = (xs >= x[0]) & (xs <= x[-1])
            out[bi, inside] = np.interp(xs[inside], x, pulse_emp[bi])
    return out


def pulses_stage(s: Sums, inp: Inputs, lay: Layout, spec: Spectrum, opts: AnalysisOptions) -> Pulses:
    n_in_win = int(spec.bin_count.sum())
    pulse_emp = derivative(_per_bin_mean(s.bin_loss, spec.bin_count), inp.x, opts.smoothing,
                           savgol_window=opts.savgol_window, savgol_polyorder=opts.savgol_polyorder)
    al_half = _per_bin_mean(s.bin_al, spec.bin_count)
    g_half = s.g / max(n_in_win, 1)
    template_emp = np.full(lay.u_grid.size, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        template_emp[lay.cols_e] = np.where(s.ge_n >= opts.min_bin_count, s.ge / s.ge_n, np.nan)
    return Pulses(pulse_emp=pulse_emp, pulse_fit_grid=_per_bin_mean(s.bin_pf, spec.bin_count),
                  aligned_emp=_align_empirical(pulse_emp, spec.bin_count, spec.bin_mean_tau_x, inp.x, lay.u_grid),
                  aligned_fit=np.concatenate([al_half[:, :0:-1], al_half], axis=1), g_half=g_half,
                  template=np.concatenate([g_half[:0:-1], g_half]), template_emp=template_emp)


def _svd_ranges(pu: Pulses, lay: Layout, populated: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``u_svd`` (1.5 × the half-width where g falls to 1 % of its peak) and the empirical range: narrowed,
    down to g's half-maximum half-width at most, until at least 4 populated bins are complete over it."""
    u_half, u_grid, h = lay.u_half, lay.u_grid, lay.h
    gmax = float(np.max(np.abs(pu.g_half))) if pu.g_half.size else 0.0
    if not gmax > 0:
        cols = np.abs(u_grid) <= u_half[-1] + 1e-12
        return float(u_half[-1]), float(u_half[-1]), cols
    above = np.nonzero(np.abs(pu.g_half) >= 0.01 * gmax)[0]
    u_svd = max(min(1.5 * u_half[above[-1]] if above.size else u_half[-1], u_half[-1]), 3 * h)
    cols_emp, u_emp = np.abs(u_grid) <= u_svd + 1e-12, u_svd
    half_max = np.nonzero(np.abs(pu.g_half) >= 0.5 * gmax)[0]
    u_core = u_half[half_max[-1]] if half_max.size else u_half[0]
    for u_try in u_half[::-1]:
        if u_try > u_svd + 1e-12:
            continue
        if u_try < u_core - 1e-12:
            break
        c = np.abs(u_grid) <= u_try + 1e-12
        if int((populated & np.all(np.isfinite(pu.aligned_emp[:, c]), axis=1)).sum()) >= 4:
            cols_emp, u_emp = c, float(u_try)
            break
    return float(u_svd), float(u_emp), cols_emp


def _svd_of(mat, cols, use) -> dict:
    """Energy fractions, singular values and the top right-singular vectors of ``mat[use][:, cols]``."""
    if use.sum() < 2:
        return {"svd_energy1": math.nan, "svd_energy2": math.nan, "singular_values": np.zeros(0),
                "vectors": np.zeros((0, int(cols.sum())))}
    _, S_, Vt = np.linalg.svd(mat[use][:, cols], full_matrices=False)
    en = S_**2 / np.sum(S_**2)
    for j in range(Vt.shape[0]):  # sign convention: each vector positive at its largest magnitude
        if Vt[j, np.argmax(np.abs(Vt[j]))] < 0:
            Vt[j] *= -1
    return {"svd_energy1": float(en[0]), "svd_energy2": float(en[:2].sum()) if en.size > 1 else float(en[0]),
            "singular_values": S_, "vectors": Vt[:4]}


def svd_stage(pu: Pulses, lay: Layout, spec: Spectrum, opts: AnalysisOptions) -> dict:
    """SVD of the aligned empirical pulses (suffix "") and of the token-aligned fitted pulses ("_fit")."""
    populated = spec.bin_count >= opts.min_bin_count
    u_svd, u_emp, cols_emp = _svd_ranges(pu, lay, populated)
    cols_fit = np.abs(lay.u_grid) <= u_svd + 1e-12
    g2 = pu.template**2
    svd = {"u_svd": u_svd, "definition": "energy_j = s_j^2 / sum(s^2); no centring", "u_svd_emp": u_emp,
           "template_energy_in_u_svd_emp": float(g2[cols_emp].sum() / g2.sum()) if g2.sum() > 0 else math.nan}
    for tag, mat, cols in (("", pu.aligned_emp, cols_emp), ("_fit", pu.aligned_fit, cols_fit)):
        use = populated & np.all(np.isfinite(mat[:, cols]), axis=1)
        svd[f"n_bins_used{tag}"] = int(use.sum())
        svd[f"bins_used{tag}"] = use
        svd.update({f"{k}{tag}": v for k, v in _svd_of(mat, cols, use).items()})
    svd["u"] = lay.u_grid[cols_emp]
    svd["u_fit"] = lay.u_grid[cols_fit]
    svd["source"] = "empirical per-bin pulses aligned at the bin mean tau"
    return svd
