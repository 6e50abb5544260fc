"""Inputs and outputs of the pre-split decomposition (``tokenscale.spectrum.analyze`` at commit effb621), pinned.

The staged analysis must give the same numbers where nothing was meant to change (token selection ``all``).
``python tests/analysis_reference.py`` wrote ``tests/data/analysis_reference.json`` with the unsplit code; the
inputs are rebuilt here from seeds, so the file holds outputs only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tokenscale.fit import SigmoidFit
from tokenscale.fit.planted import planted_trajectories

REFERENCE = Path(__file__).parent / "data" / "analysis_reference.json"
CASES = {  # name -> analyze options
    "dpeak": dict(n_bins=20, transient="dpeak", n_boot=30, seed=3, min_bin_count=10),
    "frac": dict(n_bins=16, transient=0.2, n_boot=20, seed=0, min_bin_count=10, smoothing="savgol"),
}
ARRAYS = ("loss_emp", "loss_sig", "deriv_emp", "deriv_sig", "deriv_rec", "deriv_pl", "loss_pl", "density_x",
          "density_orig", "bin_count", "bin_mean_tau_x", "deriv_rec_emp", "post_mask")
SUBSAMPLED = ("template", "template_emp", "deriv_sig_grid", "deriv_rec_grid")  # every 8th point


def reference_inputs(n: int = 4000, k: int = 36, seed: int = 11):
    """Planted trajectories on the demo's axis shape (36 log-spaced checkpoints over 3.3 decades) with every
    row kind, a few invalid and max-iter fits, and the planted parameters as the fit."""
    axis = np.geomspace(20.0, 40000.0, k)
    losses, t = planted_trajectories(n, axis, seed=seed, alpha=1.8)
    rng = np.random.default_rng(seed + 1)
    status = np.zeros(n, np.int8)
    status[rng.choice(n, n // 50, replace=False)] = 1
    status[rng.choice(n, n // 100, replace=False)] = 2
    category = (np.asarray(t["kind"]) % 4).astype(np.int8)
    fit = SigmoidFit(tau=t["tau"], tau_orig=t["tau_orig"], lam=t["lam"], delta=t["delta"], post=t["post"],
                     pre=t["pre"], sse=np.zeros(n), r2=np.ones(n), status=status, category=category,
                     n_iter=np.zeros(n, np.int32), axis=t["x"], axis_orig=axis, transform="log10")
    return losses, fit


def outputs(res) -> dict:
    out = {"summary": res.summary()}
    for name in ARRAYS:
        out[name] = np.asarray(getattr(res, name), dtype=float).tolist()
    for name in SUBSAMPLED:
        out[name] = np.asarray(getattr(res, name), dtype=float)[::8].tolist()
    out["singular_values"] = np.asarray(res.svd["singular_values"], dtype=float).tolist()
    return json.loads(json.dumps(out, default=float).replace("NaN", "null"))


if __name__ == "__main__":
    from tokenscale.spectrum import analyze  # the unsplit code

    losses, fit = reference_inputs()
    ref = {name: outputs(analyze(losses, fit, **opts)) for name, opts in CASES.items()}
    REFERENCE.write_text(json.dumps(ref, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)", file=sys.stderr)
