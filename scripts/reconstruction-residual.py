#!/usr/bin/env python
"""Where a series' reconstruction R² is lost (docs/reconstruction.md).

Two measurements on a finished series (``results/series/<name>``: trajectories, analysis.h5):

1. the share of the reconstruction's squared residual (p∗g − empirical −dL/dx) at each post-transient point;
2. the sigmoid-implied −dL/dx at those points after refitting every token on the checkpoints from index k on,
   for each k in ``--starts`` (indices on the trajectories' full axis): R² against the empirical derivative. The
   analysis's ``r2_sigmoid_deriv`` is the value at k = the series' fit-window start (``fit-window.json``); p∗g
   approximates the sigmoid-implied derivative (``r2_reconstruction_vs_sigmoid``), so this R² is what the
   reconstruction can reach with the per-token model fitted on that window.

A diagnosis, not a stage of the workflow: the refits use the analysis's axis transform and otherwise the fit engine's
defaults, not the config's fit slice.

    python scripts/reconstruction-residual.py results/series/t_moe --starts 0 10 15 18 20 23
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokenscale.analysis.numerics import fit_quality, pulse
from tokenscale.analysis.result import SpectrumResult, read_analysis
from tokenscale.fit import fit_sigmoids
from tokenscale.io import read_run_trajectories


def read_series(series: Path, axis_name: str) -> tuple[np.ndarray, np.ndarray, SpectrumResult]:
    """(N, K) losses, (K,) axis in original units, the series' analysis."""
    shards = sorted((series / "trajectories").glob("shard-*.h5"))
    if not shards:
        raise SystemExit(f"reconstruction-residual: no trajectory shards under {series / 'trajectories'}")
    losses, axes, _ = read_run_trajectories(shards)
    if axis_name not in axes:
        raise SystemExit(f"reconstruction-residual: --axis {axis_name!r} is not one of {sorted(axes)}")
    return losses, axes[axis_name].astype(float), read_analysis(series / "analysis" / "analysis.h5")


def implied_derivative(losses: np.ndarray, axis: np.ndarray, start: int, x_eval: np.ndarray,
                       transform: str = "log10") -> np.ndarray:
    """Mean over all tokens of the fitted pulse Δλ σ(1−σ) at ``x_eval`` (transformed axis), fits on checkpoints
    ``start:``."""
    fit = fit_sigmoids(losses[:, start:], axis[start:], transform=transform)
    ok = np.isfinite(fit.tau) & np.isfinite(fit.lam) & np.isfinite(fit.delta)  # (N,)
    p = pulse(x_eval[None, :], fit.tau[ok, None], fit.lam[ok, None], fit.delta[ok, None])  # (n_ok, P)
    return p.sum(axis=0) / losses.shape[0]


def residual_share(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each point's share of Σ (pred − ref)² (sums to 1)."""
    r2 = (np.asarray(pred, float) - np.asarray(ref, float)) ** 2
    return r2 / r2.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("series", type=Path, help="a series folder: results/series/<name>")
    ap.add_argument("--axis", default="step", help="the trajectories' axis dataset (step, tokens, ...)")
    ap.add_argument("--starts", type=int, nargs="+", default=[0], help="first checkpoint index of each refit")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    losses, axis, an = read_series(args.series, args.axis)
    post = np.asarray(an.post_mask, bool)
    emp, rec, x = an.deriv_emp[post], an.deriv_rec[post], an.axis_x[post]
    share = residual_share(rec, emp)
    out = {"series": str(args.series), "r2_reconstruction": fit_quality(rec, emp)[0],
           "residual_share": {f"{a:.6g}": float(s) for a, s in zip(an.axis_orig[post], share)}, "refits": []}
    print(f"reconstruction R² {out['r2_reconstruction']:.3f}; share of its squared residual per post-transient point:")
    for a, s in out["residual_share"].items():
        print(f"  {a:>10}  {s:6.1%}")
    for k in args.starts:
        r2 = fit_quality(implied_derivative(losses, axis, k, x, an.transform), emp)[0]
        out["refits"].append({"start_index": k, "start": float(axis[k]), "r2_sigmoid_deriv": r2})
        print(f"fits from checkpoint {k} ({args.axis} {axis[k]:.6g}): sigmoid-implied −dL/dx R² {r2:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
