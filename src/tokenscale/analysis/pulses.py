"""Stage 5: per-bin pulses, their alignment on u = x − τ, the shared template g(u) (Eq. 4), and the SVD of the
aligned pulses.

The headline SVD (paper App., Fig. 11) is taken over G learning-time *groups*: the selected in-window tokens whose
τ lies in the interior ``[x_0 + u_r, x_1 − u_r]`` are split into G equal-count τ quantile groups; group g's pulse is
−d/dx of its mean loss, read at ``τ̄_g + u`` for ``|u| ≤ u_r`` (complete by construction). G is
``analysis.svd_groups`` (null: the paper's 40, its Fig. 3B grouping), lowered to ``n_interior // min_bin_count``
when the tokens are too few; ``u_r`` is the largest half-width in ``[u_core, u_svd]`` (the template's half-maximum
half-width, and 1.5 × where g falls to 1 % of its peak, at most a quarter of the window span so that the groups
cover at least its middle half) whose interior holds ``max(G, 10) · min_bin_count`` tokens.
Energy of mode j = ``s_j² / Σ s²`` (no centring). The *null* gives each group one random width and shape and
measures it as the data are: group g's loss is the mean of ``1 − σ(λ_± (x − τ))`` over (NULL_TAUS quantiles of)
its tokens' τ, with width λ e^{s} left of τ and λ e^{−s} right of it (s: a random skew), λ log-uniform over the 5–95 % range of the
in-window |λ|, s uniform on [−NULL_SKEW, NULL_SKEW]; −d/dx on the same axis, read at ``τ̄_g + u`` on the same u
points, the same G. ``svd_null_energy1`` gives its mean and 95 % range over ``NULL_DRAWS`` draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from tokenscale.analysis.accumulate import Inputs, Layout, Sums
from tokenscale.analysis.numerics import derivative
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.analysis.spectrum import Spectrum

__all__ = ["Pulses", "pulses_stage", "svd_stage", "svd_groups_stage", "null_energy", "PAPER_SVD_GROUPS"]

PAPER_SVD_GROUPS = 40  # the paper's learning-time grouping (Fig. 3B: 40 bins)
MIN_SVD_GROUPS = 10
NULL_DRAWS = 200
NULL_TAUS = 32  # τ quantiles per group the null's pulses are averaged over
NULL_SKEW = 0.5
INTERIOR_FRACTION_CAP = 0.25  # u_r ≤ span/4: the groups' τ cover at least the middle half of the window


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


def svd_stage(pu: Pulses, lay: Layout, spec: Spectrum, opts: AnalysisOptions, groups: dict | None = None) -> dict:
    """SVD of the aligned empirical pulses (suffix "") and of the token-aligned fitted pulses ("_fit") of the
    spectrum's populated bins; with ``groups`` (:func:`svd_groups_stage`) the headline keys (svd_energy1/2,
    singular_values, vectors, u) are the learning-time groups' and the bins' move to the suffix "_bins"."""
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
    if groups is not None:
        for k in ("svd_energy1", "svd_energy2", "singular_values", "vectors", "u", "source"):
            svd[f"{k}_bins"] = svd.pop(k)
        svd.update(groups)
        svd["source"] = "empirical pulses of equal-count learning-time groups aligned at the group mean tau"
    return svd


def _u_limits(g_half: np.ndarray, lay: Layout) -> tuple[float, float]:
    """(u_core, u_svd): g's half-maximum half-width and 1.5 × its 1 %-of-peak half-width (at least 3 grid steps)."""
    u_half = lay.u_half
    gmax = float(np.max(np.abs(g_half))) if g_half.size else 0.0
    if not gmax > 0:
        return float(u_half[-1]), float(u_half[-1])
    above = np.nonzero(np.abs(g_half) >= 0.01 * gmax)[0]
    u_svd = max(min(1.5 * u_half[above[-1]] if above.size else u_half[-1], u_half[-1]), 3 * lay.h)
    half_max = np.nonzero(np.abs(g_half) >= 0.5 * gmax)[0]
    return float(min(u_half[half_max[-1]] if half_max.size else u_half[0], u_svd)), float(u_svd)


def _group_range(tau: np.ndarray, lay: Layout, u_core: float, u_svd: float, need: int) -> float:
    """The largest u in [u_core, min(u_svd, span/4)] whose interior [x_0 + u, x_1 − u] holds ``need`` tokens (else
    u_core): the groups' τ cover at least the middle half of the window."""
    u_max = min(u_svd, INTERIOR_FRACTION_CAP * (lay.x1 - lay.x0))
    for u in lay.u_half[::-1]:
        if u > u_max + 1e-12:
            continue
        if u < u_core - 1e-12:
            break
        if int(np.sum((tau >= lay.x0 + u) & (tau <= lay.x1 - u))) >= need:
            return float(u)
    return float(u_core)


def _group_sums(losses, group: np.ndarray, G: int, K: int, chunk: int) -> np.ndarray:
    """(G, K) Σ ℓ_i per group (rows with group −1 skipped), one chunked pass."""
    acc = np.zeros((G, K))
    for i0 in range(0, group.size, chunk):
        gi = group[i0:i0 + chunk]
        if np.any(gi >= 0):
            L = np.asarray(losses[i0:i0 + gi.size], dtype=float)
            np.add.at(acc, gi[gi >= 0], L[gi >= 0])
    return acc


def _group_taus(tau: np.ndarray, group: np.ndarray, G: int, m: int = NULL_TAUS) -> np.ndarray:
    """(G, m) evenly spaced quantiles of each group's τ: the positions the null's pulses are averaged over."""
    q = (np.arange(m) + 0.5) / m
    return np.stack([np.quantile(tau[group == j], q) for j in range(G)])


def null_energy(x: np.ndarray, u: np.ndarray, tau_groups: np.ndarray, lam_range: tuple[float, float],
                n_draws: int = NULL_DRAWS, seed: int = 0, deriv=None) -> dict:
    """Energy of mode 1 of G aligned pulses of random widths and skews, measured as the data are (module
    docstring): group g's loss is the mean of ``1 − σ(λ_± (x − τ))`` over its τ (``tau_groups[g]``), on the axis
    ``x``; −d/dx (``deriv``, default numpy's gradient) read at ``τ̄_g + u``. Mean, 95 % range, per-draw values."""
    deriv = deriv or (lambda y: derivative(y, x))
    rng = np.random.default_rng(seed)
    lo, hi = (math.log(max(v, 1e-12)) for v in lam_range)
    G = tau_groups.shape[0]
    X = x[None, None, :] - tau_groups[:, :, None]  # (G, m, K)
    tau_bar = tau_groups.mean(axis=1)
    e1 = np.full(n_draws, np.nan)
    for d in range(n_draws):
        lam = np.exp(rng.uniform(lo, hi, size=(G, 1, 1)))
        s = rng.uniform(-NULL_SKEW, NULL_SKEW, size=(G, 1, 1))
        lam_x = np.where(X < 0, lam * np.exp(s), lam * np.exp(-s))
        dl = deriv(expit(-lam_x * X).mean(axis=1))
        mat = np.stack([np.interp(tau_bar[j] + u, x, dl[j]) for j in range(G)])
        sv = np.linalg.svd(mat, compute_uv=False)
        e1[d] = sv[0] ** 2 / np.sum(sv**2)
    return {"mean": float(np.mean(e1)), "ci": [float(np.quantile(e1, 0.025)), float(np.quantile(e1, 0.975))],
            "n_draws": int(n_draws), "lam_range": [float(lam_range[0]), float(lam_range[1])], "draws": e1}


def svd_groups_stage(losses, s: Sums, inp: Inputs, lay: Layout, pu: Pulses, opts: AnalysisOptions) -> dict:
    """The SVD of G equal-count learning-time groups' aligned empirical pulses and its null (module docstring)."""
    tok = s.final_valid & lay.in_win
    tau = inp.par["tau"]
    G_req = int(opts.svd_groups) if opts.svd_groups is not None else PAPER_SVD_GROUPS
    u_core, u_svd = _u_limits(pu.g_half, lay)
    u_r = _group_range(tau[tok], lay, u_core, u_svd, max(G_req, MIN_SVD_GROUPS) * opts.min_bin_count)
    inner = tok & (tau >= lay.x0 + u_r) & (tau <= lay.x1 - u_r)
    n_in = int(inner.sum())
    G = min(G_req, n_in // max(opts.min_bin_count, 1))
    out = {"svd_groups_requested": G_req, "n_groups_svd": int(G), "u_groups": u_r, "n_tokens_svd": n_in,
           "grouping": "equal-count tau quantile groups of the selected tokens with tau in [x0 + u_r, x1 - u_r]"}
    cols = np.abs(lay.u_grid) <= u_r + 1e-12
    u = lay.u_grid[cols]
    if G < 2:
        out.update(svd_energy1=math.nan, svd_energy2=math.nan, svd_null_energy1=None, note=f"{n_in} tokens: <2 groups")
        return out
    order = np.argsort(tau[inner], kind="stable")
    group = np.full(inp.N, -1, dtype=np.int64)
    group[np.nonzero(inner)[0][order]] = np.arange(n_in) * G // n_in
    n_g = np.bincount(group[group >= 0], minlength=G)
    tau_g = np.bincount(group[group >= 0], weights=tau[group >= 0], minlength=G) / n_g
    chunk = max(64, int(opts.chunk_elems // max(inp.K, 1)))
    mean_loss = _group_sums(losses, group, G, inp.K, chunk) / n_g[:, None]
    d = derivative(mean_loss, inp.x, opts.smoothing, savgol_window=opts.savgol_window,
                   savgol_polyorder=opts.savgol_polyorder)
    mat = np.stack([np.interp(tau_g[j] + u, inp.x, d[j]) for j in range(G)])
    sv = _svd_of(mat, np.ones(u.size, bool), np.ones(G, bool))
    lam = np.abs(inp.par["lam"][tok])
    lam_range = (float(np.quantile(lam, 0.05)), float(np.quantile(lam, 0.95)))
    null = null_energy(inp.x, u, _group_taus(tau, group, G), lam_range, seed=opts.seed,
                       deriv=lambda y: derivative(y, inp.x, opts.smoothing, savgol_window=opts.savgol_window,
                                                  savgol_polyorder=opts.savgol_polyorder))
    out.update(svd_energy1=sv["svd_energy1"], svd_energy2=sv["svd_energy2"], singular_values=sv["singular_values"],
               vectors=sv["vectors"], group_pulses=mat, group_tau=tau_g, u=u, svd_null_energy1_draws=null.pop("draws"),
               svd_null_energy1=null)
    return out
