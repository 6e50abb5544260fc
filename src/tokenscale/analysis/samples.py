"""Stage 7: token bookkeeping (counts per status and category) and the small token samples the figures draw
(example trajectories per category, a collapse sample of in-window tokens, a parameter scatter)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tokenscale.io.fits import CATEGORY_NAMES

from tokenscale.analysis.accumulate import STATUS_INVALID, Inputs, Layout, Sums
from tokenscale.analysis.options import AnalysisOptions

__all__ = ["Samples", "counts_stage", "samples_stage"]


@dataclass
class Samples:
    sample_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    sample_losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sample_params: dict = field(default_factory=dict)  # tau, lam, delta, post, category, collapse
    category_examples: dict = field(default_factory=dict)  # name -> indices into sample_*
    scatter: dict = field(default_factory=dict)  # tau, tau_orig, lam, delta subsample


def counts_stage(s: Sums, inp: Inputs, lay: Layout) -> tuple[dict, dict]:
    """``(counts, category_counts)``: how many rows are valid, invalid, in and outside the window."""
    category, status, tau, fv = inp.par["category"], inp.par["status"], inp.par["tau"], s.final_valid
    names = list(CATEGORY_NAMES)
    cat_all = np.bincount(np.clip(category, 0, len(names)), minlength=len(names) + 1)
    cat_val = np.bincount(np.clip(category[fv], 0, len(names)), minlength=len(names) + 1)
    category_counts = {nm: {"all": int(cat_all[i]), "valid": int(cat_val[i])} for i, nm in enumerate(names)}
    other = (category < 0) | (category >= len(names))
    if cat_all[len(names)] and np.any(category >= len(names)):
        category_counts["other"] = {"all": int(np.sum(other)), "valid": int(np.sum(fv & other))}
    counts = {
        "n_tokens": inp.N, "n_valid": s.n_valid, "n_invalid_fit": int(np.sum(~inp.fitvalid)),
        "n_nonfinite_loss": s.n_nonfinite, "n_max_iter": int(np.sum(status == 1)),
        "n_status_invalid": int(np.sum(status == STATUS_INVALID)),
        "n_selected": int(np.sum(fv & (inp.weight > 0))),
        "n_in_window": int(np.sum(fv & lay.in_win)),
        "n_tau_before_window": int(np.sum(fv & (tau < lay.x0))),
        "n_tau_after_window": int(np.sum(fv & (tau > lay.x1))),
    }
    return counts, category_counts


def samples_stage(losses, s: Sums, inp: Inputs, lay: Layout, opts: AnalysisOptions) -> Samples:
    p = inp.par
    tau, category = p["tau"], p["category"]
    rs = np.random.default_rng(opts.seed + 3)
    vidx = np.nonzero(s.final_valid)[0]
    examples: dict[str, np.ndarray] = {}
    for ci, nm in enumerate(CATEGORY_NAMES):
        cand = vidx[category[vidx] == ci]
        k = min(4, cand.size)
        examples[nm] = np.sort(rs.choice(cand, k, replace=False)) if k else np.zeros(0, int)
    win_idx = np.nonzero(s.final_valid & lay.in_win)[0]
    coll = np.sort(rs.choice(win_idx, min(opts.n_samples, win_idx.size), replace=False)) \
        if win_idx.size else np.zeros(0, int)
    sample_idx = np.unique(np.concatenate(list(examples.values()) + [coll]).astype(np.int64))
    sample_losses = np.asarray(losses[sample_idx], dtype=float) if sample_idx.size else np.zeros((0, inp.K))
    pos = {int(i): j for j, i in enumerate(sample_idx)}
    sample_params = {k: p[k][sample_idx] for k in ("tau", "tau_orig", "lam", "delta", "post", "category")}
    sample_params["collapse"] = np.array([pos[int(i)] for i in coll], dtype=int)
    sc = np.sort(rs.choice(vidx, min(opts.n_scatter, vidx.size), replace=False))
    scatter = {k: p[k][sc] for k in ("tau", "tau_orig", "lam", "delta", "category")}
    scatter["in_window"] = (tau[sc] >= lay.x0) & (tau[sc] <= lay.x1)
    return Samples(sample_idx=sample_idx, sample_losses=sample_losses, sample_params=sample_params,
                   category_examples={nm: np.array([pos[int(i)] for i in ex], dtype=int)
                                      for nm, ex in examples.items()}, scatter=scatter)
