"""Stage 4: the learning-time spectrum p(τ) on the spectrum bins and its truncated power-law tail, for the main
selection and for every other configured selection (each reported with its β and CI)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokenscale import TokenscaleError

from tokenscale.analysis.accumulate import FINE_BINS, Inputs, Layout, Sums
from tokenscale.analysis.numerics import to_orig
from tokenscale.analysis.options import AnalysisOptions, Selection, selection_weights
from tokenscale.analysis.tail import fit_truncated_power_law
from tokenscale.analysis.tail_compare import compare_tail

__all__ = ["Spectrum", "spectrum_stage", "tail_of_selection"]

TAIL_METHOD = ("truncated power-law MLE on [xmin, window end]; xmin by KS minimisation "
               "(Clauset-Shalizi-Newman); CI by token bootstrap with xmin re-selected")


@dataclass
class Spectrum:
    bin_count: np.ndarray  # (B,) selected in-window tokens per bin (unweighted)
    bin_mean_tau_x: np.ndarray  # (B,) NaN for empty bins
    density_x: np.ndarray  # (B,) selection weight per unit x, as a fraction of all valid tokens
    density_orig: np.ndarray  # (B,) the same per original unit
    tail: dict  # the main selection's tail
    selections: dict  # name -> tail numbers of every configured selection


@dataclass
class _Fine:
    """The in-window tokens with w > 0 of one selection on the fine τ grid."""

    keep: np.ndarray  # (N,) bool
    bin: np.ndarray  # (n,) fine bin of each kept token
    ln_tau: np.ndarray  # (n,) ln τ (original units; 0 where τ <= 0)
    counts: np.ndarray  # (FINE_BINS,) Σ w
    sum_ln: np.ndarray  # (FINE_BINS,) Σ w ln τ


def _fine_histogram(tau_x, tau_o, w, lay: Layout) -> _Fine:
    x0, x1 = lay.x0, lay.x1
    keep = (w > 0) & (tau_x >= x0) & (tau_x <= x1)
    fb = np.clip(np.floor((tau_x[keep] - x0) / (x1 - x0) * FINE_BINS).astype(np.int64), 0, FINE_BINS - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.nan_to_num(np.where(tau_o[keep] > 0, np.log(tau_o[keep]), np.nan))
    c = np.bincount(fb, weights=w[keep] if np.any(w[keep] != 1.0) else None, minlength=FINE_BINS)
    s = np.bincount(fb, weights=w[keep] * lt, minlength=FINE_BINS)
    return _Fine(keep=keep, bin=fb, ln_tau=lt, counts=c.astype(float), sum_ln=s)


def _weighted_bootstrap(fb, wk, lt, edges_o, opts: AnalysisOptions) -> list[float]:
    """β of token resamples (multinomial token multiplicities) of a weighted selection, τ_min re-selected."""
    rng = np.random.default_rng(opts.seed + 2)
    n = fb.size
    out = []
    for _ in range(opts.n_boot):
        m = rng.multinomial(n, np.full(n, 1.0 / n)) * wk
        r = fit_truncated_power_law(np.bincount(fb, weights=m, minlength=FINE_BINS),
                                    np.bincount(fb, weights=m * lt, minlength=FINE_BINS), edges_o,
                                    min_tail=opts.min_tail, min_tail_span=opts.min_tail_span, n_boot=0)
        if math.isfinite(r["beta"]):
            out.append(r["beta"])
    return out


def _compare(tau_o, w, t: dict) -> dict:
    """CSN likelihood-ratio tests of the fitted tail against a truncated lognormal and a truncated power law with
    exponential cutoff on the same window [xmin, xmax] (:mod:`.tail_compare`); a note where they cannot run."""
    if not math.isfinite(t["beta"]):
        return {"note": "no tail fit"}
    a, b = float(t["xmin"]), float(t["xmax"])
    keep = (w > 0) & (tau_o >= a) & (tau_o <= b * (1 + 1e-12))
    try:
        c = compare_tail(np.clip(tau_o[keep], a, b), a, b, weights=w[keep])
    except TokenscaleError as e:
        return {"note": str(e)}
    return {alt: {k: c[alt].get(k) for k in ("R", "normalized_R", "p", "test", "verdict")}
            for alt in ("lognormal", "cutoff")} | {"beta_check": c["powerlaw"]["beta"], "n": c["n"]}


def tail_of_selection(sel: Selection, inp: Inputs, valid: np.ndarray, lay: Layout, opts: AnalysisOptions) -> dict:
    """Tail fit of one selection's τ (valid rows only); unweighted selections bootstrap the fine histogram."""
    p = inp.par
    w = selection_weights(sel, p["delta"], p["r2"], valid)
    tau_x, tau_o = p["tau"], p["tau_orig"]
    edges_o = to_orig(lay.fine_edges, inp.transform)
    fine = _fine_histogram(tau_x, tau_o, w, lay)
    weighted = sel.weight != "count"
    t = fit_truncated_power_law(fine.counts, fine.sum_ln, edges_o, min_tail=opts.min_tail,
                                min_tail_span=opts.min_tail_span, n_boot=0 if weighted else opts.n_boot,
                                seed=opts.seed + 2)
    if weighted and opts.n_boot > 0 and math.isfinite(t["beta"]):
        bs = _weighted_bootstrap(fine.bin, w[fine.keep], fine.ln_tau, edges_o, opts)
        if bs:
            t.update(beta_ci=[float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))],
                     beta_se=float(np.std(bs, ddof=1)) if len(bs) > 1 else math.nan, n_boot_ok=len(bs))
    n_sel = int(np.sum(w > 0))
    t["comparison"] = _compare(tau_o, np.where(fine.keep, w, 0.0), t)
    t.update(method=TAIL_METHOD, selection=sel.name, description=sel.describe(), n_selected=n_sel,
             fraction_in_window=float(np.sum(fine.counts)) / max(int(valid.sum()), 1),
             n_selected_in_window=int(fine.bin.size))
    return t


def spectrum_stage(s: Sums, inp: Inputs, lay: Layout, opts: AnalysisOptions) -> Spectrum:
    """Per-bin density of the main selection, and the tail of every configured selection."""
    valid = s.final_valid
    inw = valid & lay.in_win
    b = lay.bin_of[inw]
    w = inp.weight[inw]
    bin_n = np.bincount(b, minlength=lay.B).astype(float)
    bin_w = np.bincount(b, weights=w, minlength=lay.B)
    tau_sum = np.bincount(b, weights=inp.par["tau"][inw], minlength=lay.B)
    edges_o = to_orig(lay.bin_edges, inp.transform)
    with np.errstate(divide="ignore", invalid="ignore"):
        density_x = bin_w / (s.n_valid * np.diff(lay.bin_edges))
        density_orig = bin_w / (s.n_valid * np.diff(edges_o))
        bin_mean_tau = np.where(bin_n > 0, tau_sum / bin_n, np.nan)
    tails = {name: tail_of_selection(sel, inp, valid, lay, opts) for name, sel in opts.selections.items()}
    return Spectrum(bin_count=bin_n, bin_mean_tau_x=bin_mean_tau, density_x=density_x, density_orig=density_orig,
                    tail=tails[opts.selection], selections=tails)
