"""The paper's method beside the default (issue #31 item 5): the same decomposition under each of two choices.

* **token selection**: the default ``analysis.selection`` (``quality``: Δ ≥ 0.2 nats, R² ≥ 0.3) feeds p(τ), g and
  p∗g; the paper's Eq. 5 averages every token (selection ``all``). Same fits, cheap.
* **fit start**: the default fits each token from the series' fit window (``fit.start``: ``unigram``, the first
  checkpoint whose mean loss beats the unigram cross-entropy); the paper fits the whole trajectory. This refits
  every row from the first checkpoint with the same engine defaults as the ``fit`` rule (CPU: the native kernel,
  ~0.1 s for 32k rows × 36 points), in the analysis job.

``method_table`` returns, per method, β of p(τ) (tail fit, with its CI), α_fit and α_predicted = β − 1, R² of the
reconstruction p∗g against the empirical −dL/dx, g's FWHM (decades of the transformed axis), the SVD energy of
mode 1 over learning-time groups and its null mean, and the window and token counts. Methods: ``default``
(selection, fit start), ``all_tokens`` (all, fit start), ``whole_fit`` (selection, whole trajectory) and
``paper`` (all, whole trajectory). The other methods run without bootstrap (their β has no CI: the bootstrap is
80 % of an analysis' time); the default's CI stands for the sampling spread. The App. A.2 frequency ρ is the
alignment rule's (not computed here).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.analysis.numerics import to_orig
from tokenscale.analysis.options import AnalysisOptions, Selection
from tokenscale.analysis.pipeline import analyze
from tokenscale.analysis.result import SpectrumResult

__all__ = ["method_row", "method_table", "whole_axis", "METHODS", "format_table"]

METHODS = {  # name -> (all tokens?, whole trajectory?)
    "default": (False, False), "all_tokens": (True, False), "whole_fit": (False, True), "paper": (True, True)}


def whole_axis(axis: dict, fit) -> np.ndarray:
    """The trajectories' axis (one of ``axis``) whose end is the fits' axis."""
    fa = np.asarray(fit.axis_orig, dtype=np.float64)
    for a in axis.values():
        a = np.asarray(a, dtype=np.float64)
        if a.size >= fa.size and np.array_equal(a[a.size - fa.size:], fa):
            return a
    raise TokenscaleError(f"no trajectory axis ends with the fits' axis ({fa.size} points)")


def method_row(res: SpectrumResult) -> dict:
    """The numbers one method is compared by (module docstring)."""
    tl, m, sv = res.tail, res.metrics, res.svd
    null = sv.get("svd_null_energy1") or {}
    return {"beta": tl["beta"], "beta_ci": list(tl["beta_ci"]) if tl.get("beta_ci") is not None else None, "alpha_fit": res.powerlaw["alpha"],
            "alpha_predicted": tl["beta"] - 1.0, "r2_reconstruction": m["r2_reconstruction"],
            "template_fwhm_x": m["template_fwhm_x"], "svd_energy1": sv.get("svd_energy1"),
            "svd_null_energy1": null.get("mean"), "svd_null_energy1_ci": null.get("ci"), "n_groups_svd": sv.get("n_groups_svd"),
            "window_start": float(to_orig(res.axis_x[0], res.transform)), "n_axis_points": int(res.axis_x.size),
            "n_selected": int(res.counts.get("n_selected", 0)), "n_in_window": int(res.counts.get("n_in_window", 0))}


def method_table(losses, axis_whole: np.ndarray, fit, opts: AnalysisOptions, default: SpectrumResult,
                 *, refit=None, engine: str = "auto") -> dict:
    """Every method of :data:`METHODS` on the same trajectories: ``losses`` (N, K_whole) on ``axis_whole``,
    ``fit`` (the default fits, on the end of that axis), ``default`` (their analysis under ``opts``). ``refit``
    (losses, axis) -> fits of whole trajectories (default: :func:`tokenscale.fit.fit_sigmoids` on the CPU)."""
    if refit is None:
        def refit(L, a):
            from tokenscale.fit import fit_sigmoids  # torch: only this step pays for it

            return fit_sigmoids(L, a, transform=fit.transform, device="cpu", engine=engine)
    k0 = int(losses.shape[1] - np.asarray(fit.axis_orig).size)
    whole = fit if k0 == 0 else refit(np.asarray(losses, dtype=np.float64), np.asarray(axis_whole, dtype=np.float64))
    out = {"definition": "default = analysis.selection on fits from fit.start; paper = every token (Eq. 5) on "
                         "fits of the whole trajectory; all_tokens / whole_fit change one of the two",
           "selection_default": opts.selection, "fit_start_index": k0}
    for name, (all_tokens, whole_traj) in METHODS.items():
        if name == "default":
            res = default
        else:
            sel = Selection("all") if all_tokens else opts.main  # the main selection's tail only (time)
            o = dataclasses.replace(opts, n_boot=0, selection=sel.name, selections={sel.name: sel})
            res = analyze(losses if whole_traj else losses[:, k0:], whole if whole_traj else fit, o)
        out[name] = method_row(res)
    return out


def format_table(methods: dict) -> str:
    """A plain-text table of :func:`method_table`'s rows (the analyze log and the README)."""
    cols = ("beta", "alpha_fit", "r2_reconstruction", "template_fwhm_x", "svd_energy1", "svd_null_energy1",
            "window_start", "n_selected")
    lines = ["method      " + " ".join(f"{c:>17}" for c in cols)]
    for name in METHODS:
        r = methods[name]
        lines.append(f"{name:<11} " + " ".join(f"{r[c]:>17.4g}" if isinstance(r[c], (int, float)) and r[c] is not None
                                               else f"{str(r[c]):>17}" for c in cols))
    return "\n".join(lines)
